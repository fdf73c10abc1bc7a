import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { sleep } from '../util/proc.js';

/**
 * Per-sandbox memory limits. cgroup v2 (`memory.max`) where the unified hierarchy has the memory
 * controller; otherwise cgroup v1's memory hierarchy (`memory.limit_in_bytes`), as on hosts that still
 * mount it separately. Exceeding the limit OOM-kills that sandbox's QEMU only.
 */
export interface CgroupInfo {
  version: 1 | 2;
  root: string;
}

const V2 = '/sys/fs/cgroup';
const V1 = '/sys/fs/cgroup/memory';

export function detectMemoryCgroup(): CgroupInfo | undefined {
  try {
    const ctl = fs.readFileSync(path.join(V2, 'cgroup.controllers'), 'utf8');
    if (ctl.split(/\s+/).includes('memory')) return { version: 2, root: path.join(V2, 'forkd') };
  } catch {
    /* no unified hierarchy */
  }
  if (fs.existsSync(path.join(V1, 'memory.limit_in_bytes')))
    return { version: 1, root: path.join(V1, 'forkd') };
  return undefined;
}

export function cgroupPath(id: string): string {
  const cg = requireCgroup();
  return path.join(cg.root, id);
}

function requireCgroup(): CgroupInfo {
  const cg = detectMemoryCgroup();
  if (!cg)
    throw new ForkdError(
      'host_unsupported',
      'no cgroup memory controller is available (neither cgroup v2 with "memory" nor a v1 memory hierarchy)',
      'run forkd doctor; memory limits need the memory controller mounted',
    );
  return cg;
}

/** Create (idempotently) `forkd/<name>` with the memory controller enabled down to it. */
export function makeCgroup(cg: CgroupInfo, name: string): string {
  fs.mkdirSync(cg.root, { recursive: true });
  if (cg.version === 2)
    // The memory controller must be enabled for children at each level.
    for (const dir of [V2, cg.root]) {
      try {
        fs.writeFileSync(path.join(dir, 'cgroup.subtree_control'), '+memory');
      } catch {
        /* already enabled, or not allowed here: the mkdir below will tell */
      }
    }
  const dir = path.join(cg.root, name);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** Create the sandbox's cgroup with its limit and move `pid` into it. Returns the cgroup path. */
export function limitMemory(id: string, pid: number, limitMib: number): string {
  const cg = requireCgroup();
  const bytes = String(limitMib * 1048576);
  const dir = makeCgroup(cg, id);
  if (cg.version === 2) {
    fs.writeFileSync(path.join(dir, 'memory.max'), bytes);
    tryWrite(path.join(dir, 'memory.swap.max'), '0');
  } else {
    fs.writeFileSync(path.join(dir, 'memory.limit_in_bytes'), bytes);
    tryWrite(path.join(dir, 'memory.memsw.limit_in_bytes'), bytes);
  }
  fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(pid));
  return dir;
}

function tryWrite(file: string, v: string): void {
  try {
    fs.writeFileSync(file, v);
  } catch {
    /* optional knob (no swap accounting) */
  }
}

/** Remove a sandbox cgroup once its processes are gone (retries briefly while the kernel drains it). */
export async function removeCgroup(dir: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      await sleep(50);
    }
  }
}

/** Whether the cgroup recorded an OOM kill (v1: memory.oom_control; v2: memory.events). */
export function oomKilled(dir: string): boolean {
  try {
    const ev = fs.readFileSync(path.join(dir, 'memory.events'), 'utf8');
    return /oom_kill [1-9]/.test(ev);
  } catch {
    /* v1 */
  }
  try {
    return /oom_kill [1-9]/.test(fs.readFileSync(path.join(dir, 'memory.oom_control'), 'utf8'));
  } catch {
    return false;
  }
}
