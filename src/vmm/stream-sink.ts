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
  // umask 0: the socket is made 0777 at bind (a chmod after it would race QEMU's connect). It is in the
  // VMM's own 0700 dir, so only that VMM (its uid) and root can reach it.
  const writer = spawn(
    'socat',
    ['-u', '-b', '1048576', `UNIX-LISTEN:${sock},unlink-early,umask=0000`, 'STDOUT'],
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
  while (!connectable(sock)) {
    if (writer.exitCode !== null || Date.now() > deadline) {
      close();
      throw new ForkdError('vmm_failed', `socat did not listen on ${sock}: ${err.trim() || 'timed out'}`);
    }
    await sleep(2);
  }
  return { uri: `unix:${sock}`, written, close };
}

/**
 * socat listens on the socket, which is open to others (what a jailed QEMU's connect needs): socat
 * binds, then listens, and a connect in between is refused. Listening sockets carry __SO_ACCEPTCON
 * (0x10000) in /proc/net/unix.
 */
function connectable(sock: string): boolean {
  try {
    if ((fs.statSync(sock).mode & 0o002) === 0) return false;
  } catch {
    return false;
  }
  const table = fs.readFileSync('/proc/net/unix', 'utf8');
  for (const line of table.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f.slice(7).join(' ') === sock) return (Number.parseInt(f[3]!, 16) & 0x10000) !== 0;
  }
  return false;
}
