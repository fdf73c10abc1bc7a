import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { runDir } from '../util/paths.js';
import { createOverlay } from '../vmm/disk.js';
import { QemuVmm, type PendingRestore } from '../vmm/qemu.js';
import type { MachineConfig } from '../vmm/types.js';
import { createTap, deleteLink } from '../network/tap.js';
import type { LoadedSnapshot } from '../snapshot/store.js';
import { diskImage } from '../snapshot/assemble.js';

/**
 * A prepared child: QEMU started with the snapshot's RAM mapped and its disk overlay and tap in place,
 * waiting for its device state (`-incoming defer`). Taking one skips process start-up, QMP handshake
 * and overlay creation: what is left is loading ~60 KiB of device state and `cont`.
 */
export interface Prepared {
  id: string;
  dir: string;
  disk: string;
  tap: string | undefined;
  pending: PendingRestore;
  /** which snapshot content it was made for (a re-created tag must not get an old child) */
  key: string;
}

export function newSandboxId(): string {
  return `sb-${randomBytes(8).toString('hex')}`;
}

export function sandboxDir(id: string): string {
  return path.join(runDir(), `forkd-${id}`);
}

export const SANDBOX_DIR_PREFIX = 'forkd-sb-';

export function machineOf(s: LoadedSnapshot): MachineConfig {
  return {
    accel: s.meta.machine.accel,
    vcpus: s.meta.machine.vcpus,
    memMib: s.meta.machine.mem_mib,
    net: s.meta.machine.net,
  };
}

export function snapshotKey(s: LoadedSnapshot): string {
  return `${s.tag}:${s.meta.files.vmstate.sha256}:${s.meta.files.memory.sha256}`;
}

/** Start a child up to the point where it waits for its device state. */
export async function prepareChild(
  s: LoadedSnapshot,
  memoryFile: string,
  id = newSandboxId(),
): Promise<Prepared> {
  const dir = sandboxDir(id);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const disk = path.join(dir, 'disk.qcow2');
  let tap: string | undefined;
  try {
    await createOverlay(disk, await diskImage(s), 'qcow2');
    if (s.meta.machine.net === 'virtio') {
      tap = `fkt${id.slice(3, 15)}`;
      await createTap(tap);
    }
    const pending = await new QemuVmm().prestart({
      machine: machineOf(s),
      workDir: dir,
      memoryFile,
      vmstateFile: path.join(s.dir, s.meta.files.vmstate.path),
      disk,
      name: `forkd-${id}`,
      ...(tap ? { tap } : {}),
    });
    return { id, dir, disk, tap, pending, key: snapshotKey(s) };
  } catch (e) {
    if (tap) await deleteLink(tap);
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

export async function discardPrepared(p: Prepared): Promise<void> {
  await p.pending.vm.destroy();
  if (p.tap) await deleteLink(p.tap);
  fs.rmSync(p.dir, { recursive: true, force: true });
}

export interface PoolOptions {
  /** Prepared children kept per snapshot tag (0 = pool off). */
  perTag: number;
  /** Upper bound over all tags, so an idle host is not loaded with waiting VMMs. */
  maxTotal: number;
  log: (msg: string) => void;
}

/**
 * The warm pool: per snapshot tag, a few prepared children. A tag joins the pool the first time a
 * sandbox is spawned from it; the pool refills in the background after every take.
 */
export class WarmPool {
  private readonly ready = new Map<string, Prepared[]>();
  private readonly filling = new Set<string>();
  private closed = false;

  constructor(
    private readonly opts: PoolOptions,
    private readonly resolve: (tag: string) => Promise<{ s: LoadedSnapshot; memoryFile: string } | undefined>,
  ) {}

  get enabled(): boolean {
    return this.opts.perTag > 0;
  }

  sizes(): Record<string, number> {
    return Object.fromEntries([...this.ready].map(([t, l]) => [t, l.length]));
  }

  total(): number {
    let n = 0;
    for (const l of this.ready.values()) n += l.length;
    return n;
  }

  /** A prepared child for this snapshot content, or undefined (then the caller starts one itself). */
  take(s: LoadedSnapshot): Prepared | undefined {
    const list = this.ready.get(s.tag);
    const key = snapshotKey(s);
    let got: Prepared | undefined;
    while (list?.length) {
      const p = list.shift()!;
      if (p.key === key && p.pending.vm.isAlive()) {
        got = p;
        break;
      }
      void discardPrepared(p);
    }
    this.refill(s.tag);
    return got;
  }

  /** Ask for the tag's pool to be topped up (no-op when the pool is off or full). */
  refill(tag: string): void {
    if (!this.enabled || this.closed || this.filling.has(tag)) return;
    this.filling.add(tag);
    void this.fill(tag).finally(() => this.filling.delete(tag));
  }

  private async fill(tag: string): Promise<void> {
    for (;;) {
      if (this.closed) return;
      const list = this.ready.get(tag) ?? [];
      this.ready.set(tag, list);
      if (list.length >= this.opts.perTag || this.total() >= this.opts.maxTotal) return;
      const r = await this.resolve(tag).catch(() => undefined);
      if (!r) return this.drop(tag);
      try {
        const p = await prepareChild(r.s, r.memoryFile);
        if (this.closed) return void (await discardPrepared(p));
        list.push(p);
      } catch (e) {
        this.opts.log(`warm pool: cannot prepare a child of '${tag}': ${(e as Error).message}`);
        return;
      }
    }
  }

  /** Forget a tag (deleted or re-created): its prepared children are stopped. */
  async drop(tag: string): Promise<void> {
    const list = this.ready.get(tag) ?? [];
    this.ready.delete(tag);
    await Promise.all(list.map(discardPrepared));
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.ready.keys()].map((t) => this.drop(t)));
  }
}
