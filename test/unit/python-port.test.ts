/**
 * The host's client of the Python worker's own port, against a stand-in guest that speaks the real
 * handshake and can misbehave the ways a hostile guest can. The real worker (pyworker.py) is driven on
 * real VMs (test/vm/core.test.ts); here: its protocol constants match the host's.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PythonPort, skipRepeatedAcks } from '../../src/agent-client/python-port.js';
import { ACK, HELLO, HelloScanner, STARTED, ackFrame } from '../../src/protocol/resync.js';

type Reply = (req: Record<string, unknown>, sock: net.Socket) => void;

/** Answers each JSON line with `reply`, after the HELLO/ACK handshake (then calls `afterAck`). */
function fakeWorker(
  socketPath: string,
  reply: Reply,
  afterAck?: (sock: net.Socket, nonce: Buffer) => void,
): net.Server {
  return net.createServer((sock) => {
    sock.on('error', () => {});
    const scanner = new HelloScanner();
    let inSession = false;
    let buf = '';
    sock.on('data', (d: Buffer) => {
      if (!inSession) {
        const r = scanner.push(d);
        if (!r.hello) return;
        inSession = true;
        sock.write(ackFrame(r.hello.nonce));
        afterAck?.(sock, r.hello.nonce);
        d = r.hello.rest;
      }
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        reply(JSON.parse(line) as Record<string, unknown>, sock);
      }
    });
  });
}

const EVAL_OK = { ok: true, result: '2', result_json: 2, stdout: '', stderr: '', duration_ms: 1 };

describe('PythonPort (host side of the Python worker port)', () => {
  let dir: string;
  let n = 0;
  const servers: net.Server[] = [];
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-pyport-'))));
  after(() => {
    for (const s of servers) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  async function serve(reply: Reply, afterAck?: (sock: net.Socket, nonce: Buffer) => void): Promise<string> {
    const p = path.join(dir, `py${n++}.sock`);
    const s = fakeWorker(p, reply, afterAck);
    servers.push(s);
    await new Promise<void>((r) => s.listen(p, r));
    return p;
  }

  it('matches replies to requests by id, and validates them', async () => {
    const p = await serve((req, sock) => {
      // Out of order on purpose: the second request is answered first.
      if (req.op === 'eval' && req.code === 'slow')
        setTimeout(() => sock.write(JSON.stringify({ ...EVAL_OK, result: "'slow'", id: req.id }) + '\n'), 50);
      else sock.write(JSON.stringify({ ...EVAL_OK, id: req.id }) + '\n');
    });
    const py = await PythonPort.connect(p);
    const [a, b] = await Promise.all([py.eval({ code: 'slow' }), py.eval({ code: '1+1' })]);
    assert.equal(a.result, "'slow'");
    assert.equal(b.result_json, 2);
    py.close();
  });

  it("skips the session's ACK repeated before the first reply (workers in older snapshots), even split", async () => {
    const p = await serve(
      (req, sock) => sock.write(JSON.stringify({ ...EVAL_OK, id: req.id }) + '\n'),
      (sock, nonce) => {
        const ack = ackFrame(nonce);
        sock.write(Buffer.concat([ack, ack.subarray(0, 5)]));
        setTimeout(() => sock.write(ack.subarray(5)), 20);
      },
    );
    const py = await PythonPort.connect(p);
    await new Promise((r) => setTimeout(r, 60));
    assert.equal((await py.eval({ code: '1+1' })).result_json, 2);
    assert.equal((await py.eval({ code: '1+1' })).result_json, 2);
    assert.equal(py.usable, true);
    py.close();
  });

  it("skipRepeatedAcks drops only this session's ACK, and holds what may be the start of one", () => {
    const ack = ackFrame(Buffer.alloc(16, 1));
    assert.deepEqual(skipRepeatedAcks(Buffer.concat([ack, ack, Buffer.from('{')]), ack), {
      rest: Buffer.from('{'),
      undecided: false,
    });
    assert.equal(skipRepeatedAcks(ack.subarray(0, 3), ack).undecided, true);
    assert.equal(skipRepeatedAcks(ackFrame(Buffer.alloc(16, 2)), ack).undecided, false);
    assert.equal(skipRepeatedAcks(ackFrame(Buffer.alloc(16, 2)), ack).rest.length, ack.length);
  });

  it('fails the request, not the host, on a malformed or wrongly shaped reply', async () => {
    const p = await serve((req, sock) => {
      if (req.code === 'shape') sock.write(JSON.stringify({ ok: true, result: 5, id: req.id }) + '\n');
      else sock.write('{not json\n');
    });
    const py = await PythonPort.connect(p);
    await assert.rejects(py.eval({ code: 'shape' }), /malformed reply \(result/);
    await assert.rejects(py.eval({ code: 'garbage' }), /not JSON/);
    assert.equal(py.usable, false, 'a session out of step is dropped');
    await assert.rejects(py.eval({ code: 'again' }), /not JSON/);
  });

  it('drops the session on an oversized line and on a reply to no request', async () => {
    const big = await serve((_req, sock) => {
      const chunk = Buffer.alloc(1 << 20, 0x61);
      for (let i = 0; i < 65; i++) sock.write(chunk);
    });
    const py = await PythonPort.connect(big);
    await assert.rejects(py.eval({ code: 'x' }), /larger than/);
    const stray = await serve((_req, sock) => sock.write(JSON.stringify({ ...EVAL_OK, id: 999 }) + '\n'));
    const py2 = await PythonPort.connect(stray);
    await assert.rejects(py2.eval({ code: 'x' }), /reply to no request/);
  });

  it('names a restarted worker (its STARTED announcement), even split across chunks', async () => {
    const p = await serve((_req, sock) => {
      sock.write(STARTED.subarray(0, 7));
      setTimeout(() => sock.write(STARTED.subarray(7)), 20);
    });
    const py = await PythonPort.connect(p);
    await assert.rejects(py.eval({ code: 'x' }), /Python worker restarted/);
  });

  it('a request past its guard fails with a timeout and drops the session', async () => {
    const p = await serve(() => {});
    const py = await PythonPort.connect(p);
    // The guard is the eval's own timeout plus a grace of 15 s (scaled): use ping, whose limit is its own.
    await assert.rejects(py.ping(50), /no answer within/);
    assert.equal(py.usable, false);
  });

  it("an op that fails (ok: false) is an error naming the worker's message", async () => {
    const p = await serve((req, sock) =>
      sock.write(
        JSON.stringify({
          ok: false,
          error: { type: 'KeyError', message: "'seed_hex'", traceback: '' },
          id: req.id,
        }) + '\n',
      ),
    );
    const py = await PythonPort.connect(p);
    await assert.rejects(py.announce('c1'), /python identity: 'seed_hex'/);
    // An eval's own failure is a result, not an error.
    py.close();
  });

  it("the worker's resync frames and port name are the host's (pyworker.py keeps copies)", () => {
    const src = fs.readFileSync(path.resolve('src/guest/agent/pyworker.py'), 'utf8');
    const hex = (name: string) =>
      new RegExp(`^${name} = bytes\\.fromhex\\("([0-9a-f]+)"\\)`, 'm').exec(src)?.[1];
    assert.equal(hex('HELLO'), HELLO.toString('hex'));
    assert.equal(hex('ACK'), ACK.toString('hex'));
    assert.equal(hex('STARTED'), STARTED.toString('hex'));
    assert.match(src, /^HOST_PORT_NAME = "org\.forkd\.python"$/m);
  });
});
