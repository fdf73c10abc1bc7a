/**
 * Route-level tests of the controller's REST API, in-process (fastify inject), without VMs: every
 * route's error statuses, auth, audit log, metrics, OpenAPI, state persistence. Real-VM behaviour of
 * the same routes is in test/vm/controller.test.ts.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { isolatedDirs } from '../helpers/env.js';
import { inProcessController } from '../helpers/controller.js';
import { checkBearer, loadToken } from '../../src/controller/auth.js';
import { isLoopback, parseBind } from '../../src/controller/bind.js';
import { StateStore } from '../../src/controller/state.js';
import { fakeSnapshot } from '../helpers/fake-snapshot.js';

const TOKEN = 'test-token-0123456789abcdef';
let dirs: ReturnType<typeof isolatedDirs>;
let app: FastifyInstance;
let audit: string;
let close: () => Promise<void>;
const auth = { authorization: `Bearer ${TOKEN}` };

async function call(method: string, url: string, body?: unknown, headers: Record<string, string> = auth) {
  const r = await app.inject({
    method: method as 'GET',
    url,
    headers: {
      ...headers,
      ...(body !== undefined && typeof body !== 'string' ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { payload: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  let json: Record<string, unknown> = {};
  try {
    json = r.json();
  } catch {
    /* not JSON */
  }
  return { status: r.statusCode, json, text: r.body, headers: r.headers };
}

function assertError(r: { status: number; json: Record<string, unknown> }, status: number, pattern?: RegExp) {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.equal(typeof r.json.error, 'string', `error body must be {"error": ...}: ${JSON.stringify(r.json)}`);
  if (pattern) assert.match(String(r.json.error), pattern);
}

describe('controller REST routes', () => {
  before(async () => {
    ({ app, dirs, audit, close } = await inProcessController('routes', { token: TOKEN }));
  });
  after(() => close());

  it('healthz is open; everything else needs the bearer token', async () => {
    assert.deepEqual((await call('GET', '/healthz', undefined, {})).json, { ok: true });
    assertError(await call('GET', '/v1/snapshots', undefined, {}), 401, /missing bearer token/);
    assertError(
      await call('GET', '/v1/snapshots', undefined, { authorization: 'Bearer nope' }),
      401,
      /invalid bearer token/,
    );
    assertError(await call('GET', '/version', undefined, { authorization: TOKEN }), 401, /missing/);
    assert.equal((await call('GET', '/v1/snapshots')).status, 200);
  });

  it('bearer comparison and token file checks', () => {
    assert.equal(checkBearer(`Bearer ${TOKEN}`, TOKEN), 'ok');
    assert.equal(checkBearer(`Bearer ${TOKEN}x`, TOKEN), 'invalid');
    assert.equal(checkBearer(`bearer ${TOKEN}`, TOKEN), 'missing');
    assert.equal(checkBearer(undefined, TOKEN), 'missing');
    const f = path.join(dirs.data, 'tok');
    for (const [content, re] of [
      ['', /empty/],
      ['REPLACE_ME_WITH_32_BYTES_BASE64', /placeholder/],
      ['short', /shorter than 16/],
    ] as const) {
      fs.writeFileSync(f, content);
      assert.throws(() => loadToken(f), re);
    }
    fs.writeFileSync(f, `  ${TOKEN}\n`);
    assert.equal(loadToken(f), TOKEN);
  });

  it('bind addresses: loopback detection and parsing', () => {
    assert.deepEqual(parseBind('127.0.0.1:8889'), { host: '127.0.0.1', port: 8889 });
    assert.deepEqual(parseBind('[::1]:80'), { host: '::1', port: 80 });
    assert.throws(() => parseBind('8889'), /HOST:PORT/);
    assert.ok(isLoopback('127.0.0.1') && isLoopback('::1') && isLoopback('localhost'));
    assert.ok(!isLoopback('0.0.0.0') && !isLoopback('10.0.0.1'));
  });

  it('version and metrics', async () => {
    const v = await call('GET', '/version');
    assert.equal(v.json.api, 'v1');
    assert.equal(v.json.vmm, 'qemu');
    const m = await call('GET', '/metrics');
    assert.equal(m.status, 200);
    assert.match(String(m.headers['content-type']), /text\/plain/);
    for (const name of [
      'forkd_snapshots_total',
      'forkd_sandboxes_active',
      'forkd_branches_in_flight',
      'forkd_branch_concurrency_cap 2',
      'forkd_build_info',
      'forkd_spawn_seconds',
      'forkd_exec_seconds',
      'forkd_branch_pause_seconds',
      'forkd_pool_ready',
    ])
      assert.ok(m.text.includes(name), `metrics lack ${name}`);
  });

  it('unknown routes, malformed JSON and wrong content types get JSON errors', async () => {
    assertError(await call('GET', '/v1/nope'), 404, /no route GET \/v1\/nope/);
    assertError(
      await call('POST', '/v1/sandboxes', '{"snapshot_tag":', {
        ...auth,
        'content-type': 'application/json',
      }),
      400,
      /not valid JSON/,
    );
    assertError(
      await call('POST', '/v1/sandboxes', 'snapshot_tag=x', { ...auth, 'content-type': 'text/plain' }),
      415,
    );
  });

  it('spawn validation: n, tags, unknown fields, unknown snapshot', async () => {
    assertError(await call('POST', '/v1/sandboxes', { snapshot_tag: 'x', n: 0 }), 400, /n/);
    assertError(await call('POST', '/v1/sandboxes', { snapshot_tag: 'x', n: 1001 }), 400, /n/);
    assertError(await call('POST', '/v1/sandboxes', { n: 1 }), 400, /snapshot_tag/);
    assertError(await call('POST', '/v1/sandboxes', { snapshot_tag: '../etc', n: 1 }), 400, /tag/);
    assertError(
      await call('POST', '/v1/sandboxes', { snapshot_tag: 'x', bogus: 1 }),
      400,
      /bogus|unrecognized/i,
    );
    assertError(
      await call('POST', '/v1/sandboxes', { snapshot_tag: 'x', hugepages: true }),
      400,
      /hugepages/,
    );
    assertError(
      await call('POST', '/v1/sandboxes', { snapshot_tag: 'missing' }),
      404,
      /no snapshot tagged 'missing'/,
    );
  });

  it('sandbox routes answer 404 for unknown ids and 400 for malformed ones', async () => {
    const id = 'sb-0000000000000000';
    assertError(await call('GET', `/v1/sandboxes/${id}`), 404, /not found/);
    assertError(await call('DELETE', `/v1/sandboxes/${id}`), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/ping`), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/exec`, { args: ['true'] }), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/eval`, { code: '1' }), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/branch`, {}), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/timeout`, { timeout: 10 }), 404);
    assertError(await call('GET', `/v1/sandboxes/${id}/files?path=/etc/hostname`), 404);
    assertError(await call('GET', `/v1/sandboxes/${id}/files/list?path=/`), 404);
    assertError(await call('GET', `/v1/sandboxes/${id}/files/stat?path=/`), 404);
    assertError(await call('DELETE', `/v1/sandboxes/${id}/files?path=/x`), 404);
    assertError(await call('POST', `/v1/sandboxes/${id}/files/mkdir`, { path: '/x' }), 404);
    assertError(await call('GET', '/v1/sandboxes/bad%20id'), 400);
    assertError(await call('GET', `/v1/sandboxes/${id}/files?path=relative`), 400, /absolute/);
    assertError(await call('POST', `/v1/sandboxes/${id}/exec`, {}), 400, /args|cmd/);
    assertError(
      await call('POST', `/v1/sandboxes/${id}/exec`, { args: ['a'], cmd: 'b' }),
      400,
      /exactly one/,
    );
    assertError(await call('POST', `/v1/sandboxes/${id}/exec`, { args: [] }), 400);
    assertError(await call('POST', `/v1/sandboxes/${id}/eval`, {}), 400, /code/);
    assertError(await call('POST', `/v1/sandboxes/${id}/branch`, { mode: 'sideways' }), 400, /mode/);
    assertError(
      await call('POST', `/v1/sandboxes/${id}/branch`, { mode: 'full', diff: true }),
      400,
      /combined/,
    );
    assertError(
      await call('POST', `/v1/sandboxes/${id}/branch`, { diff: true, live: true }),
      400,
      /only one/,
    );
    assertError(await call('POST', `/v1/sandboxes/${id}/branch`, { tag: 'a/b' }), 400, /tag/);
    assert.deepEqual((await call('GET', '/v1/sandboxes')).json, []);
  });

  it('snapshot routes: list, unknown tags, bad requests', async () => {
    assert.deepEqual((await call('GET', '/v1/snapshots')).json, []);
    assertError(await call('DELETE', '/v1/snapshots/nope'), 404, /no snapshot/);
    assertError(
      await call('DELETE', '/v1/snapshots/nope?cascade=true&force=true'),
      400,
      /cannot be combined/,
    );
    assertError(await call('GET', '/v1/snapshots/nope/info'), 404);
    assertError(await call('POST', '/v1/snapshots/nope/compact', { to: 'nope' }), 400, /differ/);
    assertError(await call('POST', '/v1/snapshots/nope/compact', { to: 'flat' }), 404);
    assertError(await call('POST', '/v1/snapshots/nope/compact', {}), 400, /to/);
    assertError(await call('POST', '/v1/snapshots', { tag: 'x', boot_wait_secs: 61 }), 400, /boot_wait_secs/);
    assertError(await call('POST', '/v1/snapshots', { tag: 'bad tag' }), 400, /tag/);
  });

  it('chain routes: info shows lineage, delete refuses to orphan (409), cascade deletes leaves first', async () => {
    fakeSnapshot('r0');
    fakeSnapshot('r1', { parent: 'r0', baseFrom: 'r0' });
    fakeSnapshot('r2', { parent: 'r1', baseFrom: 'r0' });
    const info = await call('GET', '/v1/snapshots/r2/info');
    assert.equal(info.status, 200);
    assert.equal(info.json.chain_depth, 2);
    assert.deepEqual(info.json.ancestors, ['r0', 'r1']);
    assert.deepEqual((await call('GET', '/v1/snapshots/r0/info')).json.dependents, ['r1']);
    const refused = await call('DELETE', '/v1/snapshots/r1');
    assertError(refused, 409, /dependents: r2/);
    assert.match(String(refused.json.hint), /cascade/);
    assert.equal((await call('GET', '/v1/snapshots')).json.length, 3, 'nothing deleted');
    assert.equal((await call('DELETE', '/v1/snapshots/r0?cascade=true')).status, 204);
    assert.deepEqual((await call('GET', '/v1/snapshots')).json, []);
  });

  it('workspace routes', async () => {
    assert.deepEqual((await call('GET', '/v1/workspaces')).json, []);
    assertError(await call('GET', '/v1/workspaces/w1'), 404, /not found/);
    assertError(await call('DELETE', '/v1/workspaces/w1'), 404);
    assertError(await call('POST', '/v1/workspaces/w1/suspend', {}), 404);
    assertError(await call('POST', '/v1/workspaces/w1/resume', {}), 404);
    assertError(await call('POST', '/v1/workspaces', { name: 'w1' }), 400, /snapshot_tag/);
    assertError(await call('POST', '/v1/workspaces', { name: 'w1', snapshot_tag: 'missing' }), 404);
  });

  it('serves an OpenAPI document listing every route', async () => {
    const r = await call('GET', '/openapi.json');
    assert.equal(r.status, 200);
    const paths = Object.keys(r.json.paths as object);
    for (const p of [
      '/healthz',
      '/version',
      '/metrics',
      '/v1/snapshots',
      '/v1/snapshots/{tag}',
      '/v1/snapshots/{tag}/info',
      '/v1/snapshots/{tag}/compact',
      '/v1/sandboxes',
      '/v1/sandboxes/{id}',
      '/v1/sandboxes/{id}/ping',
      '/v1/sandboxes/{id}/exec',
      '/v1/sandboxes/{id}/eval',
      '/v1/sandboxes/{id}/branch',
      '/v1/sandboxes/{id}/files',
      '/v1/workspaces',
      '/v1/workspaces/{name}',
      '/v1/workspaces/{name}/suspend',
      '/v1/workspaces/{name}/resume',
    ])
      assert.ok(paths.includes(p), `OpenAPI lacks ${p}`);
  });

  it('writes one audit line per request, without the token', async () => {
    await call('GET', '/v1/sandboxes', undefined, { ...auth, 'user-agent': 'route-test/1' });
    await new Promise((r) => setTimeout(r, 50));
    const lines = fs
      .readFileSync(audit, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const last = [...lines].reverse().find((l) => l.ua === 'route-test/1')!;
    assert.ok(last, 'audit line for the request');
    for (const k of ['ts', 'method', 'path', 'status', 'latency_us', 'remote', 'ua'])
      assert.ok(k in last, `audit lacks ${k}`);
    assert.equal(last.path, '/v1/sandboxes');
    assert.equal(last.status, 200);
    assert.ok(
      lines.some((l) => l.status === 401),
      '401s are audited too',
    );
    assert.ok(!fs.readFileSync(audit, 'utf8').includes(TOKEN), 'the token never reaches the audit log');
  });

  it('state survives: written atomically, a corrupt file is set aside', () => {
    const f = path.join(dirs.data, 'st2.json');
    const s = new StateStore(f);
    s.load(() => {});
    s.workspaces.set('w', {
      id: 'ws-1',
      name: 'w',
      source_snapshot_tag: 't',
      current_state_tag: null,
      status: 'suspended',
      live_sandbox_id: null,
      created_at_unix: 1,
      last_active_unix: 1,
      last_branch_memory_path: null,
      per_child_netns: true,
      egress: null,
      memory_limit_mib: 256,
      envs: { A: 'b' },
      suspend_count: 1,
    });
    s.save();
    const s2 = new StateStore(f);
    s2.load(() => {});
    assert.equal(s2.workspaces.get('w')?.memory_limit_mib, 256);
    assert.equal(s2.workspaces.get('w')?.per_child_netns, true);
    fs.writeFileSync(f, '{"version":1,"sandb');
    const logs: string[] = [];
    const s3 = new StateStore(f);
    s3.load((m) => logs.push(m));
    assert.equal(s3.workspaces.size, 0);
    assert.match(logs[0]!, /unreadable/);
    assert.ok(fs.readdirSync(dirs.data).some((n) => n.startsWith('st2.json.corrupt-')));
  });
});
