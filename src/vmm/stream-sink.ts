import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { runOk } from '../util/proc.js';
import { shellQuote } from './qemu-argv.js';

/**
 * Where an outgoing migration stream (device state, or a branch's RAM + device state) is written.
 *
 * QEMU's `exec:` writer is its own child, inside the sandbox's memory cgroup, and a file written to
 * tmpfs is charged to its writer: a workspace with a memory limit was OOM-killed by its own suspend. So
 * QEMU's writer only fills a FIFO, and a `cat` started by forkd (outside the sandbox's cgroup) writes
 * the file; it exits when the stream ends, so `written` resolves only once the file is complete. Two
 * plain `cat`s keep the throughput of one (a stream through Node's event loop was 4× slower).
 *
 * QEMU's writer must not be its direct child: when the migration completes QEMU closes the pipe and, if
 * that child has not exited yet, SIGTERMs it and 10 ms later SIGKILLs it (io/channel-command.c), so a
 * writer still copying the last bytes is killed with them. On a slow host this left an empty device
 * state. So the shell QEMU starts backgrounds the copy (on the pipe, kept as fd 3: an asynchronous
 * command's stdin is /dev/null) and exits at once; the copy then runs to the end of the stream.
 */
export interface StreamSink {
  /** The `migrate` URI. */
  uri: string;
  /** Resolves with the bytes written once QEMU has closed the stream and the file is complete. */
  written: Promise<number>;
  /** Stop (the migration failed); idempotent. */
  close(): void;
}

export async function openStreamSink(workDir: string, file: string): Promise<StreamSink> {
  const fifo = path.join(workDir, `migrate-${randomBytes(3).toString('hex')}.fifo`);
  await runOk('mkfifo', ['-m', '600', fifo]);
  const out = fs.openSync(file, 'w', 0o600);
  // Opening a FIFO for reading blocks until a writer opens it: cat does that, not this process.
  const writer = spawn('cat', [fifo], { stdio: ['ignore', out, 'pipe'] });
  fs.closeSync(out);
  let err = '';
  writer.stderr?.on('data', (d) => (err += d));
  const written = new Promise<number>((resolve, reject) => {
    writer.on('error', reject);
    writer.on('close', (code, signal) => {
      fs.rmSync(fifo, { force: true });
      if (code === 0) resolve(fs.statSync(file).size);
      else
        reject(new Error(`writing the migration stream failed (${signal ?? `exit ${code}`}): ${err.trim()}`));
    });
  });
  written.catch(() => {});
  return {
    uri: `exec:exec 3<&0; cat <&3 >${shellQuote(fifo)} 3<&- &`,
    written,
    close: () => {
      if (writer.exitCode === null) writer.kill('SIGKILL');
      fs.rmSync(fifo, { force: true });
    },
  };
}
