import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { cacheDir } from './paths.js';
import { ForkdError } from './errors.js';

/**
 * How much slower this host runs than the machines forkd's timeouts were tuned on, so that every
 * internal timeout (QMP greeting, boot hang window, agent connect, ...) follows the host's measured
 * speed instead of a fixed number. Inside an emulated outer VM (nested KVM under TCG) everything runs
 * 10–50× slower; a fixed 15 s QMP greeting timeout there fails a boot that would have worked.
 *
 * The figure is a fixed CPU workload (hashing + a JS loop + map inserts), best of 3, against the time it
 * takes on the reference host; never below 1, so fast hosts keep the tuned values. Cached per boot
 * (kernel boot id). FORKD_TIME_SCALE=<factor> overrides it.
 */
export interface HostSpeed {
  /** timeouts are multiplied by this (≥ 1) */
  factor: number;
  /** best-of-3 workload time on this host */
  workload_ms: number;
  source: string;
}

/** The workload's best-of-3 on the reference host (2-core nested PVM guest, idle). */
const REFERENCE_MS = 14;
const MAX_FACTOR = 200;

let memo: HostSpeed | undefined;

function workload(): number {
  const t0 = performance.now();
  createHash('sha256')
    .update(Buffer.alloc(2 << 20, 7))
    .digest();
  let x = 0;
  for (let i = 0; i < 2_000_000; i++) x = (x * 31 + i) | 0;
  const m = new Map<string, number>();
  for (let i = 0; i < 20_000; i++) m.set(`k${i}`, i ^ x);
  return performance.now() - t0;
}

/** Measure now (about 3 × 15 ms on the reference host). */
export function measureHostSpeed(): HostSpeed {
  const best = Math.min(workload(), workload(), workload());
  const factor = Math.min(MAX_FACTOR, Math.max(1, Math.round((best / REFERENCE_MS) * 10) / 10));
  return { factor, workload_ms: Math.round(best * 10) / 10, source: 'measured (CPU workload, best of 3)' };
}

/** FORKD_TIME_SCALE=<factor>: a fixed factor instead of a measurement (undefined when unset). */
export function timeScaleFromEnv(raw: string | undefined): HostSpeed | undefined {
  if (raw === undefined || raw === '') return undefined;
  const f = Number(raw);
  if (!Number.isFinite(f) || f < 0.1 || f > 1000)
    throw new ForkdError(
      'bad_input',
      `FORKD_TIME_SCALE=${raw} is not a factor between 0.1 and 1000`,
      'set e.g. FORKD_TIME_SCALE=4, or unset it to measure the host',
    );
  return { factor: f, workload_ms: 0, source: 'FORKD_TIME_SCALE' };
}

function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export function hostSpeed(): HostSpeed {
  if (memo) return memo;
  const forced = timeScaleFromEnv(process.env.FORKD_TIME_SCALE);
  if (forced) return (memo = forced);
  const file = path.join(cacheDir(), 'host-speed.json');
  const id = bootId();
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8')) as { bootId?: string; speed?: HostSpeed };
    if (c.bootId === id && c.speed && c.speed.factor >= 1) return (memo = c.speed);
  } catch {
    /* not measured on this boot yet */
  }
  memo = measureHostSpeed();
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify({ bootId: id, speed: memo }));
    fs.renameSync(tmp, file);
  } catch {
    /* a read-only cache only costs a measurement per process */
  }
  return memo;
}

/** The longest delay setTimeout takes; a longer one overflows and fires at once (after 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** A timeout tuned on the reference host, stretched to this host's speed (at most MAX_TIMER_MS). */
export function scaledMs(ms: number): number {
  return Math.min(MAX_TIMER_MS, Math.round(ms * hostSpeed().factor));
}
