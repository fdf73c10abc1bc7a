import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { sleep } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';
import { vmDir } from './jail.js';

/**
 * Where an outgoing migration stream (device state, or a branch's RAM + device state) is written.
 *
 * QEMU connects to a unix socket in its own `vm/` dir (`migrate unix:`), where a `socat` started by
 * forkd listens and writes the file. Not QEMU's `exec:`: a jailed QEMU may not spawn (seccomp
 * spawn=deny) and sees no host path but its own. The writer also runs outside the sandbox's memory
 * cgroup, which matters: a file written to tmpfs is charged to its writer, and a workspace with a
 * memory limit was once OOM-killed by its own suspend. socat exits when QEMU closes the stream, so
 * `written` resolves only once the file is complete. (A copy through Node's event loop was 4× slower
 * than a plain copying process.)
 */
export interface StreamSink {
  /** The `migrate` URI. */
  uri: string;
  /** Resolves with the bytes written once QEMU has closed the stream and the file is complete. */
  written: Promise<number>;
  /** Stop (the migration failed); idempotent. */
  close(): void;
}

/** socat's address syntax gives these characters meaning; forkd's own paths never contain them. */
const SOCAT_UNSAFE = /[,:!"'\\\s]/;

export async function openStreamSink(workDir: string, file: string): Promise<StreamSink> {
  const sock = path.join(vmDir(workDir), `migrate-${randomBytes(3).toString('hex')}.sock`);
  if (SOCAT_UNSAFE.test(sock))
    throw new ForkdError(
      'bad_input',
      `work dir path unusable for a migration socket: ${sock}`,
      'set FORKD_RUN_DIR to a plain path',
    );
  fs.mkdirSync(path.dirname(sock), { recursive: true });
  const out = fs.openSync(file, 'w', 0o600);
  // perm=0666: the socket is in the VMM's own 0700 dir, reachable by it (its uid) and root only.
  const writer = spawn(
    'socat',
    ['-u', '-b', '1048576', `UNIX-LISTEN:${sock},unlink-early,perm=0666`, 'STDOUT'],
    { stdio: ['ignore', out, 'pipe'] },
  );
  fs.closeSync(out);
  let err = '';
  writer.stderr?.on('data', (d) => (err += d));
  const written = new Promise<number>((resolve, reject) => {
    writer.on('error', reject);
    writer.on('close', (code, signal) => {
      fs.rmSync(sock, { force: true });
      if (code === 0) resolve(fs.statSync(file).size);
      else
        reject(new Error(`writing the migration stream failed (${signal ?? `exit ${code}`}): ${err.trim()}`));
    });
  });
  written.catch(() => {});
  const close = () => {
    if (writer.exitCode === null) writer.kill('SIGKILL');
    fs.rmSync(sock, { force: true });
  };
  // QEMU's connect must find the listener.
  const deadline = Date.now() + 10_000;
  while (!fs.existsSync(sock)) {
    if (writer.exitCode !== null || Date.now() > deadline) {
      close();
      throw new ForkdError('vmm_failed', `socat did not listen on ${sock}: ${err.trim() || 'timed out'}`);
    }
    await sleep(2);
  }
  return { uri: `unix:${sock}`, written, close };
}
