import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { openStreamSink } from '../../src/vmm/stream-sink.js';

/** What QEMU does with an `exec:` migration URI: run it with sh, writing the stream to its stdin. */
function qemuWrites(uri: string, data: Buffer): Promise<number | null> {
  assert.ok(uri.startsWith('exec:'));
  const p = spawn('sh', ['-c', uri.slice('exec:'.length)], { stdio: ['pipe', 'ignore', 'inherit'] });
  p.stdin.end(data);
  return new Promise((resolve) => p.on('close', resolve));
}

describe('migration stream sink', () => {
  it('writes the stream to the file through a FIFO, with a writer this process started', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-sink-'));
    try {
      const file = path.join(dir, 'stream');
      const sink = await openStreamSink(dir, file);
      const data = randomBytes(3 << 20);
      assert.equal(await qemuWrites(sink.uri, data), 0);
      assert.equal(await sink.written, data.length);
      assert.ok(fs.readFileSync(file).equals(data));
      assert.deepEqual(
        fs.readdirSync(dir).filter((f) => f.endsWith('.fifo')),
        [],
        'the FIFO is removed',
      );
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
});
