import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { QmpClient, QmpError } from '../../src/vmm/qmp.js';

/** A scripted QMP peer on a real unix socket, speaking the wire protocol as QEMU does. */
function qmpServer(
  sockPath: string,
  handler: (cmd: Record<string, unknown>, write: (o: unknown) => void) => void,
) {
  const received: Array<Record<string, unknown>> = [];
  const server = net.createServer((c) => {
    const write = (o: unknown) => c.write(JSON.stringify(o) + '\r\n');
    write({
      QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'test' }, capabilities: [] },
    });
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const cmd = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        received.push(cmd);
        handler(cmd, write);
      }
    });
  });
  server.listen(sockPath);
  return { server, received };
}

describe('QmpClient', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-test-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('negotiates capabilities, matches replies by id (out of order) and passes events', async () => {
    const sock = path.join(dir, 'a.sock');
    const held: Array<() => void> = [];
    const { server, received } = qmpServer(sock, (cmd, write) => {
      if (cmd.execute === 'qmp_capabilities') return write({ return: {}, id: cmd.id });
      if (cmd.execute === 'slow') return held.push(() => write({ return: { which: 'slow' }, id: cmd.id }));
      if (cmd.execute === 'fast') {
        write({ event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } });
        write({ return: { which: 'fast', args: cmd.arguments }, id: cmd.id });
        held.forEach((h) => h());
      }
    });
    const qmp = await QmpClient.connect(sock);
    assert.equal(qmp.greeting?.QMP.version.qemu.minor, 2);
    assert.equal(received[0]!.execute, 'qmp_capabilities');
    const events: string[] = [];
    qmp.on('event', (e: { event: string }) => events.push(e.event));
    const slow = qmp.execute('slow');
    const fast = await qmp.execute<{ which: string; args: unknown }>('fast', { x: 1 });
    assert.deepEqual(fast, { which: 'fast', args: { x: 1 } });
    assert.deepEqual(await slow, { which: 'slow' });
    assert.deepEqual(events, ['STOP']);
    qmp.close();
    server.close();
  });

  it('turns QMP errors into QmpError with class and description', async () => {
    const sock = path.join(dir, 'b.sock');
    const { server } = qmpServer(sock, (cmd, write) => {
      if (cmd.execute === 'qmp_capabilities') return write({ return: {}, id: cmd.id });
      write({ error: { class: 'GenericError', desc: 'Failed to get "write" lock' }, id: cmd.id });
    });
    const qmp = await QmpClient.connect(sock);
    await assert.rejects(qmp.execute('cont'), (e: unknown) => {
      assert.ok(e instanceof QmpError);
      assert.equal(e.errorClass, 'GenericError');
      assert.match(e.message, /cont: GenericError: Failed to get "write" lock/);
      return true;
    });
    qmp.close();
    server.close();
  });

  it('rejects pending commands when the peer goes away, and waits for a late socket', async () => {
    const sock = path.join(dir, 'c.sock');
    // Connect before the server exists: the client retries until the socket appears.
    const pending = QmpClient.connect(sock, { timeoutMs: 3000 });
    await new Promise((r) => setTimeout(r, 50));
    let conn: net.Socket | undefined;
    const { server } = qmpServer(sock, (cmd, write) => {
      if (cmd.execute === 'qmp_capabilities') return write({ return: {}, id: cmd.id });
      // never answer; the test closes the connection instead
    });
    server.on('connection', (c) => (conn = c));
    const qmp = await pending;
    const p = qmp.execute('query-status');
    conn!.destroy();
    await assert.rejects(p, /query-status/);
    server.close();
  });

  it('times out a command that gets no reply', async () => {
    const sock = path.join(dir, 'd.sock');
    const { server } = qmpServer(sock, (cmd, write) => {
      if (cmd.execute === 'qmp_capabilities') write({ return: {}, id: cmd.id });
    });
    const qmp = await QmpClient.connect(sock);
    try {
      // Timeouts stretch with the host's measured speed (util/host-speed), so the figure may exceed 100.
      await assert.rejects(qmp.execute('stop', undefined, 100), /no reply within \d+ ms/);
    } finally {
      qmp.close();
      server.close();
    }
  });
});
