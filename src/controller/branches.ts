import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkdError, errorMessage } from '../util/errors.js';
import { createWorkDir } from '../host/workdir.js';
import { branchSandbox, type BranchStarted } from '../snapshot/branch.js';
import { validateTag } from '../snapshot/tag.js';
import { loadSnapshot, snapshotDir, snapshotExists } from '../snapshot/store.js';
import type { CaptureMode } from '../vmm/capture.js';
import { vmDir } from '../vmm/jail.js';
import type { SandboxManager } from './sandboxes.js';
import type { SnapshotRecord, StateStore } from './state.js';

export interface BranchRequest {
  tag?: string | undefined;
  mode?: CaptureMode | undefined;
  /** legacy booleans of the reference API */
  diff?: boolean | undefined;
  live?: boolean | undefined;
  measure_diff?: boolean | undefined;
  wait?: boolean | undefined;
  parent_tag?: string | undefined;
}

export interface BranchOutcome {
  record: SnapshotRecord;
  started: BranchStarted;
  /** resolves with the final record (ready or failed) */
  finished: Promise<SnapshotRecord>;
}

const nowUnix = () => Math.floor(Date.now() / 1000);

/**
 * BRANCH: snapshot a running sandbox into a new tag. At most `concurrency` branches run at once
 * (503 beyond), one per tag (409), one per sandbox (409). The snapshot is `writing` until complete and
 * cannot be spawned from until `ready`.
 */
export class BranchManager {
  private readonly inFlight = new Set<string>();

  constructor(
    private readonly state: StateStore,
    private readonly sandboxes: SandboxManager,
    readonly concurrency: number,
    private readonly hooks: {
      log: (m: string) => void;
      observe?: (mode: CaptureMode, pauseMs: number, totalMs: number, ok: boolean) => void;
    },
  ) {}

  get count(): number {
    return this.inFlight.size;
  }

  isWriting(tag: string): boolean {
    return this.inFlight.has(tag);
  }

  /** Validate, in the reference's order, and pick the effective mode. */
  private validate(id: string, req: BranchRequest): { tag: string; mode: CaptureMode } {
    const tag = validateTag(
      req.tag ?? `branch-${id.slice(3, 11)}-${nowUnix()}-${randomBytes(2).toString('hex')}`,
    );
    const legacy = [req.diff, req.live, req.measure_diff].filter(Boolean).length;
    if (req.mode && legacy)
      throw new ForkdError(
        'bad_input',
        '"mode" cannot be combined with the legacy "diff"/"live"/"measure_diff" flags',
        'send only "mode"',
      );
    if (legacy > 1)
      throw new ForkdError(
        'bad_input',
        'only one of "diff", "live" and "measure_diff" may be set',
        'send "mode": "full" | "diff" | "live"',
      );
    const mode: CaptureMode = req.mode ?? (req.diff ? 'diff' : req.live ? 'live' : 'full');
    if (req.measure_diff)
      throw new ForkdError(
        'bad_input',
        '"measure_diff" is not supported; a diff branch reports its size',
        'use "mode": "diff"',
      );
    return { tag, mode };
  }

  async branch(id: string, req: BranchRequest): Promise<BranchOutcome> {
    const { tag, mode } = this.validate(id, req);
    if (this.inFlight.has(tag))
      throw new ForkdError('conflict', `a branch to '${tag}' is already being written`);
    if (this.inFlight.size >= this.concurrency)
      throw new ForkdError(
        'busy',
        `${this.inFlight.size} branches are in flight (limit ${this.concurrency})`,
        'retry shortly, or raise --branch-concurrency',
      );
    if (snapshotExists(tag) || fs.existsSync(snapshotDir(tag)))
      throw new ForkdError('exists', `snapshot '${tag}' already exists; DELETE it first`);
    const live = this.sandboxes.get(id);
    if (snapshotExists(live.rec.snapshot_tag) && loadSnapshot(live.rec.snapshot_tag).meta.volumes?.length)
      throw new ForkdError(
        'bad_input',
        `sandbox ${id} has volumes mounted (from snapshot '${live.rec.snapshot_tag}'); a branch would capture them half-written`,
        'branch sandboxes of snapshots without volumes',
      );
    if (req.parent_tag !== undefined) {
      if (mode !== 'diff')
        throw new ForkdError('bad_input', '"parent_tag" is only meaningful with mode "diff"');
      if (req.parent_tag !== live.rec.snapshot_tag)
        throw new ForkdError(
          'bad_input',
          `"parent_tag" '${req.parent_tag}' is not the sandbox's snapshot '${live.rec.snapshot_tag}'; a diff is always against the snapshot the sandbox was forked from`,
        );
    }
    if (live.busy)
      throw new ForkdError('conflict', `sandbox ${id} is busy (${live.busy}); one branch at a time`);
    this.inFlight.add(tag);
    live.busy = `branch to ${tag}`;
    const rec = live.rec;
    let started: BranchStarted;
    let gen = rec.disk_generation + 1;
    // In the VMM's own dir: QEMU creates the new overlay itself (blockdev-snapshot-sync).
    while (fs.existsSync(path.join(vmDir(rec.work_dir), `disk-${gen}.qcow2`))) gen++;
    const t0 = performance.now();
    try {
      const source = loadSnapshot(rec.snapshot_tag);
      const activeDisk = await this.sandboxes.activeDisk(live);
      started = await branchSandbox(
        {
          vm: live.vm,
          sandboxId: id,
          source,
          memoryFile: rec.memory_file,
          activeDisk,
          nextDisk: path.join(vmDir(rec.work_dir), `disk-${gen}.qcow2`),
          // Owned by this daemon (owner.json), so `forkd cleanup` sweeps it if the daemon dies mid-branch.
          workDir: createWorkDir('branch', tag),
          network: { netns: rec.netns !== null, egress: rec.egress },
        },
        tag,
        mode,
      );
    } catch (e) {
      this.inFlight.delete(tag);
      live.busy = null;
      // The disk switch may have happened before the failure: record where the guest writes now.
      await this.sandboxes.activeDisk(live).catch(() => {});
      rec.disk_generation = gen;
      this.hooks.observe?.(mode, 0, performance.now() - t0, false);
      throw e;
    }
    // The source now writes to its new overlay.
    rec.active_disk = path.join(rec.work_dir, `disk-${gen}.qcow2`);
    rec.disk_generation = gen;
    live.busy = null;
    const record: SnapshotRecord = {
      tag,
      status: 'writing',
      created_at_unix: nowUnix(),
      branched_from: id,
      mode,
      pause_ms: started.pauseMs,
      diff_physical_bytes: started.diff?.bytes ?? null,
      warning: null,
    };
    this.state.snapshots.set(tag, record);
    this.state.save();
    const finished = started.done.then(
      () => {
        record.status = 'ready';
        rec.has_branched = true;
        rec.branch_count += 1;
        rec.last_branch_memory_path = path.join(started.dir, mode === 'diff' ? 'memory.diff' : 'memory.bin');
        this.hooks.observe?.(mode, started.pauseMs, performance.now() - t0, true);
        return record;
      },
      (e: unknown) => {
        record.status = 'failed';
        record.warning = `branch failed: ${errorMessage(e)}`;
        this.hooks.log(`branch ${tag} of ${id} failed: ${errorMessage(e)}`);
        this.hooks.observe?.(mode, started.pauseMs, performance.now() - t0, false);
        return record;
      },
    );
    void finished.finally(() => {
      this.inFlight.delete(tag);
      this.state.save();
    });
    return { record, started, finished };
  }
}
