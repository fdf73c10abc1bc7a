import type { VolumeSpec } from '../snapshot/volumes.js';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { runDir } from '../util/paths.js';
import {
  discardPrepared,
  prepareChild,
  SANDBOX_DIR_PREFIX,
  type ChildSource,
  type PreparedChild,
} from './child.js';

/**
 * A prepared child (see child.ts): QEMU started with the snapshot's RAM mapped, its device state loaded
 * and its disk overlay and tap in place, paused. Taking one skips process start-up, QMP handshake,
 * overlay creation and the state load: what is left is `cont` (and, for a Linux guest, the agent).
 */
export type Prepared = PreparedChild;

export function newSandboxId(): string {
  return `sb-${randomBytes(8).toString('hex')}`;
}

export function sandboxDir(id: string): string {
  return path.join(runDir(), `${SANDBOX_DIR_PREFIX}${id.slice(3)}`);
}

/** Prepare a daemon sandbox: its id and work dir follow the daemon's naming. */
export function prepareSandbox(
  source: ChildSource,
  id = newSandboxId(),
  volumes?: VolumeSpec[],
): Promise<Prepared> {
  return prepareChild(source, { id, workDir: sandboxDir(id), ...(volumes?.length ? { volumes } : {}) });
}

export interface PoolOptions {
  /** Prepared children kept per snapshot tag (0 = pool off). */
  perTag: number;
  /** Upper bound over all tags, so an idle host is not loaded with waiting VMMs. */
  maxTotal: number;
  log: (msg: string) => void;
  /**
   * How long after a take the refill starts (default 25 ms): a QEMU being spawned competes for the CPU
   * with the child just taken, whose start is a few milliseconds under KVM.
   */
  refillDelayMs?: number;
  /** How a child is prepared and thrown away; the engine's by default (unit tests pass their own). */
  prepare?: (source: ChildSource) => Promise<Prepared>;
  discard?: (p: Prepared) => Promise<void>;
}

/**
 * The warm pool: per snapshot tag, a few prepared children. A tag joins the pool the first time a
 * sandbox is spawned from it; the pool refills in the background after every take.
 */
export class WarmPool {
  private readonly ready = new Map<string, Prepared[]>();
  private readonly filling = new Map<string, Promise<void>>();
  private closed = false;
  private preparing = 0;
  private readonly prepare: (source: ChildSource) => Promise<Prepared>;
  private readonly discard: (p: Prepared) => Promise<void>;

  constructor(
    private readonly opts: PoolOptions,
    private readonly resolve: (tag: string) => Promise<ChildSource | undefined>,
  ) {
    this.prepare = opts.prepare ?? ((src) => prepareSandbox(src));
    this.discard = opts.discard ?? discardPrepared;
  }

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
  take(src: ChildSource): Prepared | undefined {
    const s = src.s;
    const list = this.ready.get(s.tag);
    const key = src.key;
    let got: Prepared | undefined;
    while (list?.length) {
      const p = list.shift()!;
      if (p.source.key === key && p.pending.vm.isAlive()) {
        got = p;
        break;
      }
      void this.discard(p);
    }
    const delay = this.opts.refillDelayMs ?? 25;
    if (delay <= 0) this.refill(s.tag);
    else setTimeout(() => this.refill(s.tag), delay).unref();
    return got;
  }

  /** Ask for the tag's pool to be topped up (no-op when the pool is off or full). */
  refill(tag: string): void {
    if (!this.enabled || this.closed || this.filling.has(tag)) return;
    this.filling.set(
      tag,
      this.fill(tag).finally(() => this.filling.delete(tag)),
    );
  }

  private async fill(tag: string): Promise<void> {
    for (;;) {
      if (this.closed) return;
      const list = this.ready.get(tag) ?? [];
      this.ready.set(tag, list);
      // Children being prepared count against the bound too: fills of several tags run at once.
      if (list.length >= this.opts.perTag || this.total() + this.preparing >= this.opts.maxTotal) return;
      this.preparing++;
      try {
        const r = await this.resolve(tag).catch(() => undefined);
        if (!r) return await this.drop(tag);
        const p = await this.prepare(r);
        if (this.closed) return void (await this.discard(p));
        list.push(p);
      } catch (e) {
        this.opts.log(`warm pool: cannot prepare a child of '${tag}': ${(e as Error).message}`);
        return;
      } finally {
        this.preparing--;
      }
    }
  }

  /** Forget a tag (deleted or re-created): its prepared children are stopped. */
  async drop(tag: string): Promise<void> {
    const list = this.ready.get(tag) ?? [];
    this.ready.delete(tag);
    await Promise.all(list.map((p) => this.discard(p)));
  }

  /** Stop every prepared child, including those still being prepared (so none outlives the pool). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.filling.values()]);
    await Promise.all([...this.ready.keys()].map((t) => this.drop(t)));
  }
}
