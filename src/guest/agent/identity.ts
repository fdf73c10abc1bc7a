import { execFile } from 'node:child_process';
import fs from 'node:fs';
import type { Identity, IdentityResult } from '../../protocol/agent-api.js';
import type { PythonWorker } from './python.js';
import { resetRandomPools } from './jseval.js';

/** Who this child is: written by whoever applies its identity (often the Python worker, directly). */
const SANDBOX_ID_FILE = '/run/forkd-sandbox-id';

/** The sandbox id of the last identity applied in this guest, or null (a parent, or none yet). */
export function currentSandboxId(): string | null {
  try {
    return fs.readFileSync(SANDBOX_ID_FILE, 'utf8').slice(0, 128) || null;
  } catch {
    return null;
  }
}

export function validateIdentity(b: Partial<Identity>): string | undefined {
  if (typeof b.sandbox_id !== 'string' || !/^[A-Za-z0-9_.-]{1,128}$/.test(b.sandbox_id))
    return 'bad "sandbox_id"';
  if (typeof b.hostname !== 'string' || !/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$/.test(b.hostname))
    return '"hostname" must be 1-63 letters, digits or dashes';
  if (typeof b.time_unix_ns !== 'string' || !/^\d{1,20}$/.test(b.time_unix_ns)) return 'bad "time_unix_ns"';
  if (typeof b.seed_hex !== 'string' || !/^[0-9a-f]{64,256}$/.test(b.seed_hex)) return 'bad "seed_hex"';
  return undefined;
}

/**
 * Make a restored child its own machine: new kernel RNG state, reseeded user-space RNGs, hostname and a
 * correct wall clock. The warm Python process does the privileged calls (ioctl, clock_settime) in one
 * round trip; without Python we fall back to coreutils and a plain /dev/urandom write.
 */
export async function applyIdentity(id: Identity, python: PythonWorker): Promise<IdentityResult> {
  const t0 = performance.now();
  let res: IdentityResult;
  if (python.info.ready) {
    const r = await python.request({ op: 'identity', ...id });
    res = {
      hostname: String(r.hostname),
      clock_set: Boolean(r.clock_set),
      clock_skew_before_ms: Number(r.clock_skew_before_ms),
      kernel_rng_reseeded: Boolean(r.kernel_rng_reseeded),
      python_reseeded: Boolean(r.python_reseeded),
      took_ms: 0,
    };
  } else {
    fs.writeFileSync('/dev/urandom', Buffer.from(id.seed_hex, 'hex'));
    fs.writeFileSync('/proc/sys/kernel/hostname', id.hostname);
    fs.writeFileSync(SANDBOX_ID_FILE, id.sandbox_id);
    if (!fs.lstatSync('/etc/hostname', { throwIfNoEntry: false })?.isSymbolicLink())
      fs.writeFileSync('/etc/hostname', id.hostname + '\n');
    const ns = BigInt(id.time_unix_ns);
    const skew = Number(BigInt(Date.now()) * 1_000_000n - ns) / 1e6;
    const secs = `${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`;
    const ok = await new Promise<boolean>((resolve) =>
      execFile('date', ['-u', '-s', `@${secs}`], (e) => resolve(!e)),
    );
    res = {
      hostname: id.hostname,
      clock_set: ok,
      clock_skew_before_ms: skew,
      kernel_rng_reseeded: false,
      python_reseeded: false,
      took_ms: 0,
    };
  }
  resetRandomPools();
  res.took_ms = Math.round((performance.now() - t0) * 100) / 100;
  return res;
}
