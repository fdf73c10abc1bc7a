import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import { AgentClient, AgentError, AGENT_LIMITS } from '../../src/agent-client/client.js';
import { STARTED } from '../../src/protocol/resync.js';
import { FakeGuest, PING } from '../helpers/fake-guest.js';

describe('agent client: nothing a guest sends can crash or wedge the host', () => {
  let dir: string;
  let guest: FakeGuest;
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-agentc-'));
    guest = new FakeGuest(dir);
    await guest.listen();
  });
  after(() => {
    guest.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const connect = () => AgentClient.connect(guest.socketPath, { timeoutMs: 5000 });
  const reply =
    (body: unknown, status = 200) =>
    (s: http2.ServerHttp2Stream) => {
      s.respond({ ':status': status, 'content-type': 'application/json' });
      s.end(typeof body === 'string' ? body : JSON.stringify(body));
    };
  const rejectsWith = async (p: Promise<unknown>, re: RegExp) =>
    assert.rejects(p, (e: unknown) => e instanceof AgentError && re.test(e.message));

  it('accepts a well-formed reply', async () => {
    guest.handler = reply(PING);
    const c = await connect();
    assert.equal((await c.ping()).pid, 42);
    c.close();
  });

  it('refuses replies that do not match the protocol, naming the field, and keeps the session', async () => {
    const c = await connect();
    guest.handler = reply({ ...PING, pid: 'forty-two' });
    await rejectsWith(c.ping(), /malformed reply \(pid:/);
    guest.handler = reply('{"ok": tru');
    await rejectsWith(c.ping(), /non-JSON answer/);
    guest.handler = reply({ error: 'x'.repeat(100_000) }, 500);
    const e = await c.ping().catch((x: AgentError) => x);
    assert.ok(e instanceof AgentError && e.message.length <= AGENT_LIMITS.errorChars);
    guest.handler = reply(PING);
    assert.equal((await c.ping()).ok, true, 'a bad reply fails only its own request');
    c.close();
  });

  it('fails an exec whose stream carries garbage, a bad event or an endless line', async () => {
    const c = await connect();
    const ndjson = (body: string) => (s: http2.ServerHttp2Stream) => {
      s.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
      s.end(body);
    };
    guest.handler = ndjson('{"type":"stdout","data":"a"}\nthis is not json\n');
    await rejectsWith(c.exec({ cmd: 'x' }), /not JSON/);
    guest.handler = ndjson('{"type":"exit","exit_code":"zero"}\n');
    await rejectsWith(c.exec({ cmd: 'x' }), /malformed event/);
    const saved = AGENT_LIMITS.execLineBytes;
    AGENT_LIMITS.execLineBytes = 64 * 1024;
    try {
      guest.handler = (s) => {
        s.respond({ ':status': 200 });
        s.write('{"type":"stdout","data":"' + 'y'.repeat(200 * 1024));
      };
      await rejectsWith(c.exec({ cmd: 'x' }), /line longer than/);
    } finally {
      AGENT_LIMITS.execLineBytes = saved;
    }
    guest.handler = ndjson(
      '{"type":"stdout","data":"hi"}\n{"type":"exit","exit_code":0,"signal":null,"timed_out":false,"duration_ms":1}\n',
    );
    const r = await c.exec({ cmd: 'x' });
    assert.equal(r.stdout, 'hi');
    assert.equal(r.exit_code, 0);
    c.close();
  });

  it('caps collected exec output and says it did', async () => {
    const c = await connect();
    const saved = AGENT_LIMITS.execOutputChars;
    AGENT_LIMITS.execOutputChars = 10;
    try {
      guest.handler = (s) => {
        s.respond({ ':status': 200 });
        s.end(
          '{"type":"stdout","data":"0123456789abcdef"}\n{"type":"exit","exit_code":0,"signal":null,"timed_out":false,"duration_ms":1}\n',
        );
      };
      const r = await c.exec({ cmd: 'x' });
      assert.equal(r.stdout, '0123456789');
      assert.equal(r.truncated, true);
    } finally {
      AGENT_LIMITS.execOutputChars = saved;
    }
    c.close();
  });

  it('an agent that restarts mid-request fails the request at once, and the next connection works', async () => {
    const c = await connect();
    guest.handler = (_s, _p, raw) => setTimeout(() => raw.write(STARTED), 50);
    const t0 = Date.now();
    await rejectsWith(c.exec({ cmd: 'sleep 100' }), /the guest agent restarted/);
    assert.ok(Date.now() - t0 < 5000, 'noticed without waiting for a timeout');
    assert.equal(c.usable, false);
    await rejectsWith(c.ping(), /agent/);
    guest.handler = reply(PING);
    const c2 = await connect();
    assert.equal((await c2.ping()).ok, true);
    c2.close();
  });

  it('random bytes on the port fail the session; a half frame times out and drops it', async () => {
    const c = await connect();
    guest.handler = (_s, _p, raw) =>
      raw.write(Buffer.from('garbage that is not http/2 at all \x00\xff'.repeat(10)));
    await rejectsWith(c.ping(), /rejected the guest's bytes \(FRAME_SIZE_ERROR|PROTOCOL_ERROR/);
    assert.equal(c.usable, false);

    const c2 = await connect();
    // A HEADERS frame header promising 1000 bytes, then 10 of them: the reply never completes.
    guest.handler = (_s, _p, raw) =>
      raw.write(Buffer.from([0, 3, 0xe8, 1, 4, 0, 0, 0, 1, ...Buffer.alloc(10)]));
    await rejectsWith(c2.ping(300), /no answer within \d+ ms/);
    assert.equal(c2.usable, false, 'a guest that stopped answering is resynced on the next request');
  });

  it('an exec with no timeout fails when the guest stops answering pings, instead of waiting for ever', async () => {
    const saved = { i: AGENT_LIMITS.pingIntervalMs, t: AGENT_LIMITS.pingTimeoutMs };
    AGENT_LIMITS.pingIntervalMs = 100;
    AGENT_LIMITS.pingTimeoutMs = 200;
    try {
      const c = await connect();
      // The head of an (ignorable, unknown-type) frame of 16000 bytes that never completes: whatever
      // the guest sends after it, PING replies included, is swallowed as its payload.
      guest.handler = (_s, _p, raw) => raw.write(Buffer.from([0, 0x3e, 0x80, 0xfa, 0, 0, 0, 0, 0, 1, 2, 3]));
      await rejectsWith(c.exec({ cmd: 'x' }), /stopped answering/);
      // A live agent answers pings on its own while a long command runs.
      const c2 = await connect();
      guest.handler = (s) => {
        s.respond({ ':status': 200 });
        setTimeout(
          () => s.end('{"type":"exit","exit_code":0,"signal":null,"timed_out":false,"duration_ms":900}\n'),
          900,
        );
      };
      assert.equal((await c2.exec({ cmd: 'sleep 1' })).exit_code, 0);
      c2.close();
    } finally {
      AGENT_LIMITS.pingIntervalMs = saved.i;
      AGENT_LIMITS.pingTimeoutMs = saved.t;
    }
  });
});
