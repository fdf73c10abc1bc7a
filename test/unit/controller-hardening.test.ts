/**
 * The daemon against hostile clients, over a real listening socket (not fastify inject, which skips
 * Node's HTTP layer): bodies built to make validation explode, oversized and malformed requests.
 * Every answer must be the JSON error shape, bounded in size, and audited; the daemon keeps serving.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import type { FastifyInstance } from 'fastify';
import { inProcessController } from '../helpers/controller.js';
import { checkJsonShape, JSON_BODY_LIMIT } from '../../src/controller/limits.js';

let app: FastifyInstance;
let audit: string;
let close: () => Promise<void>;
let port: number;

/** Send raw bytes, read until the server closes or a full response with Content-Length arrived. */
function raw(request: string | Buffer): Promise<{ status: number; headers: string; body: string }> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection(port, '127.0.0.1');
    let buf = '';
    const done = () => {
      const at = buf.indexOf('\r\n\r\n');
      const headers = at >= 0 ? buf.slice(0, at) : buf;
      resolve({
        status: Number(/^HTTP\/1\.1 (\d+)/.exec(buf)?.[1] ?? 0),
        headers,
        body: at >= 0 ? buf.slice(at + 4) : '',
      });
    };
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      const at = buf.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(buf.slice(0, at))?.[1];
      if (at >= 0 && len !== undefined && buf.length >= at + 4 + Number(len)) {
        s.destroy();
        done();
      }
    });
    s.on('end', done);
    s.on('error', reject);
    s.write(request);
  });
}

function post(pathname: string, body: string, extra = ''): string {
  return `POST ${pathname} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;
}

function assertJsonError(r: { status: number; body: string }, status: number, re?: RegExp) {
  assert.equal(r.status, status, r.body.slice(0, 300));
  const j = JSON.parse(r.body) as { error: string };
  assert.equal(typeof j.error, 'string');
  if (re) assert.match(j.error, re);
  assert.ok(r.body.length < 4096, `error body is bounded (${r.body.length} bytes)`);
}

const auditLines = () =>
  fs
    .readFileSync(audit, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { status: number; path: string; method: string });

describe('controller against hostile clients', () => {
  before(async () => {
    ({ app, audit, close } = await inProcessController('hardening'));
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as net.AddressInfo).port;
  });
  after(() => close());

  it('a body of a million wrong-typed array elements is refused at once, with a short error', async () => {
    const body = `{"args":[${Array(1_200_000).fill('1').join(',')}]}`; // ~2.4 MB, the fuzzer's shape
    const pending = raw(post('/v1/sandboxes/sb1/exec', body));
    const health = await raw('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(health.status, 200, 'healthz answers while the big body is handled');
    assertJsonError(await pending, 400, /array of 1200000 elements/);
    // Within the node limit but every element wrong: the error echoes a few issues, not thousands.
    const r = await raw(post('/v1/sandboxes/sb1/exec', `{"args":[${Array(4000).fill('1').join(',')}]}`));
    assertJsonError(r, 400, /and \d+ more/);
  });

  it('bodies over the JSON limit, too deep or with too many values are 4xx with the JSON shape', async () => {
    const big = `{"cmd":"${'x'.repeat(JSON_BODY_LIMIT + 10)}"}`;
    assertJsonError(await raw(post('/v1/sandboxes/sb1/exec', big)), 413);
    assertJsonError(
      await raw(post('/v1/sandboxes/sb1/exec', '['.repeat(100) + ']'.repeat(100))),
      400,
      /nested deeper/,
    );
    assert.match(
      checkJsonShape(Object.fromEntries(Array.from({ length: 100_001 }, (_, i) => [i, 0])))!,
      /more than 100000/,
    );
    assert.equal(checkJsonShape({ args: ['a', 'b'], env: { A: '1' } }), undefined);
  });

  it("requests Node's HTTP layer used to answer itself get the JSON shape and an audit line", async () => {
    const before = auditLines().length;
    assertJsonError(
      await raw('GET /v1/snapshots HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\n\r\n'),
      417,
      /Expect/,
    );
    const noHost = await raw('GET /v1/nope HTTP/1.1\r\n\r\n');
    assertJsonError(noHost, 404);
    assertJsonError(
      await raw(`GET /v1/snapshots HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`),
      431,
    );
    assertJsonError(await raw('NOT A REQUEST\r\n\r\n'), 400, /malformed HTTP request/);
    const longParam = await raw(`GET /v1/sandboxes/${'a'.repeat(300)} HTTP/1.1\r\nHost: x\r\n\r\n`);
    assert.ok(longParam.status >= 400 && longParam.status < 500, String(longParam.status));
    JSON.parse(longParam.body);
    await new Promise((r) => setTimeout(r, 100)); // the audit stream is asynchronous
    const statuses = auditLines()
      .slice(before)
      .map((l) => l.status);
    for (const s of [417, 404, 431, 400, longParam.status])
      assert.ok(statuses.includes(s), `audited ${s}: ${statuses}`);
  });
});
