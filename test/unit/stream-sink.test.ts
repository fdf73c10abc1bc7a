import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { openStreamSink } from '../../src/vmm/stream-sink.js';
import { vmDir } from '../../src/vmm/jail.js';

/** What QEMU does with a `unix:` migration URI: connect, write the stream, close. */
function qemuWrites(uri: string, data: Buffer): Promise<void> {
  assert.ok(uri.startsWith('unix:'));
  return new Promise((resolve, reject) => {
    const s = net.connect(uri.slice('unix:'.length), () => s.end(data));
    s.on('error', reject);
    s.on('close', () => resolve());
  });
}

describe('migration stream sink', () => {
  it('writes the whole stream to the file, complete when written resolves, and removes its socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-sink-'));
    try {
      const file = path.join(dir, 'stream');
      const sink = await openStreamSink(dir, file);
      assert.ok(sink.uri.startsWith(`unix:${vmDir(dir)}/`), 'the socket is in the VMM own dir');
      const data = randomBytes(9 << 20);
      await qemuWrites(sink.uri, data);
      assert.equal(await sink.written, data.length);
      assert.ok(fs.readFileSync(file).equals(data));
      assert.deepEqual(fs.readdirSync(vmDir(dir)), [], 'the socket is removed');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('close() ends a sink nobody wrote to, and the wait fails instead of hanging', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-sink-'));
    try {
      const sink = await openStreamSink(dir, path.join(dir, 'stream'));
      sink.close();
      await assert.rejects(sink.written, /writing the migration stream failed/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a work dir path that socat would misread', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-sink,x-'));
    try {
      await assert.rejects(openStreamSink(dir, path.join(dir, 'stream')), /unusable for a migration socket/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
