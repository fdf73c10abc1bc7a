import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { openStreamSink } from '../../src/vmm/stream-sink.js';

/**
 * What QEMU does with an `exec:` migration URI: run it with sh, write the stream into its stdin, and
 * once it has written the last byte, close the pipe and SIGTERM, then SIGKILL, that direct child if it
 * has not exited (io/channel-command.c). Up to a pipe's worth of the stream may not have been read by
 * then: the copy must not be that child.
 */
function qemuWrites(uri: string, data: Buffer, dir: string): Promise<number | null> {
  assert.ok(uri.startsWith('exec:'));
  const src = path.join(dir, 'qemu-side.bin');
  const pipe = path.join(dir, 'qemu-side.pipe');
  fs.writeFileSync(src, data);
  const script = [
    'mkfifo "$1"',
    'sh -c "$2" < "$1" & child=$!',
    'cat "$0" > "$1"',
    'kill -TERM $child 2>/dev/null; sleep 0.01; kill -KILL $child 2>/dev/null',
    'wait; rm -f "$1"',
  ].join('\n');
  const p = spawn('sh', ['-c', script, src, pipe, uri.slice('exec:'.length)], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return new Promise((resolve) => p.on('close', resolve));
}

describe('migration stream sink', () => {
  it('writes the whole stream to the file through a FIFO, though QEMU kills its exec child at the end', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-sink-'));
    try {
      const file = path.join(dir, 'stream');
      const sink = await openStreamSink(dir, file);
      const data = randomBytes(3 << 20);
      assert.equal(await qemuWrites(sink.uri, data, dir), 0);
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
