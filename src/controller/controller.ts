import { checkOverrides } from '../engine/volumes.js';
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { ForkdError, errorMessage } from '../util/errors.js';
import { listSnapshots, loadSnapshot, snapshotExists } from '../snapshot/store.js';
import { validateTag } from '../snapshot/tag.js';
import { deleteSnapshot } from '../snapshot/lineage.js';
import { MAX_CHILDREN, preflight, SPAWN_CONCURRENCY } from '../engine/child.js';
import { cleanup } from '../engine/sweep.js';
import { runDir } from '../util/paths.js';
import { BranchManager } from './branches.js';
import { Metrics } from './metrics.js';
import { WarmPool } from '../engine/pool.js';
import { SandboxManager, type SpawnOptions, type SpawnTimings } from './sandboxes.js';
import { StateStore, type SandboxRecord, type WorkspaceRecord } from './state.js';
import { describePolicy, normalizePolicy, type EgressPolicy } from '../network/egress-policy.js';

export interface ControllerOptions {
  stateFile: string;
  branchConcurrency: number;
  poolSize: number;
  poolMaxTotal: number;
  /** Servers the sandbox resolvers ask (host[:port]); default: the host's own. */
  dnsUpstream?: string[] | undefined;
  log: (msg: string) => void;
}

/** SnapshotInfo as the REST API returns it (reference field names, plus chain and accelerator). */
export interface SnapshotInfo {
  tag: string;
  dir: string;
  created_at_unix: number;
  status: 'writing' | 'ready' | 'failed';
  bootable: boolean;
  branched_from?: string;
  mode?: string;
  pause_ms?: number;
  diff_ms?: number;
  diff_physical_bytes?: number;
  warning?: string;
  parent_tag?: string;
  chain_depth?: number;
  accelerator?: string;
  memory_kind?: 'full' | 'diff';
  net?: 'none' | 'virtio';
}

export interface SandboxInfo {
  id: string;
  snapshot_tag: string;
  status: 'running' | 'exited';
  exit_reason?: string;
  netns: string | null;
  guest_addr: string | null;
  created_at_unix: number;
  pid: number | null;
  memory_limit_mib: number | null;
  has_branched: boolean;
  last_branch_memory_path: string | null;
  branch_count: number;
  timeout_secs: number | null;
  expires_at_unix: number | null;
  metadata: Record<string, string>;
  workspace: string | null;
  /** Its egress policy (null: no network namespace) and a one-line summary of it. */
  network: EgressPolicy | null;
  network_summary: string;
}

export interface SpawnItem extends Partial<SandboxInfo> {
  ok: boolean;
  error?: string;
  timings?: SpawnTimings;
}

export type WorkspaceInfo = Omit<WorkspaceRecord, 'envs' | 'suspend_count'>;

const nowUnix = () => Math.floor(Date.now() / 1000);

export class Controller {
  readonly state: StateStore;
  readonly pool: WarmPool;
  readonly sandboxes: SandboxManager;
  readonly branches: BranchManager;
  readonly metrics: Metrics;
  /** Changes worth an audit line of their own ('event'); the server writes them to the audit log. */
  readonly audit = new EventEmitter();
  /** tags being created by POST /v1/snapshots */
  private readonly creating = new Set<string>();
  private reaper: NodeJS.Timeout | undefined;

  constructor(readonly opts: ControllerOptions) {
    this.state = new StateStore(opts.stateFile);
    this.pool = new WarmPool(
      { perTag: opts.poolSize, maxTotal: opts.poolMaxTotal, log: opts.log },
      async (tag) => this.sandboxes.resolveSnapshot(tag),
    );
    this.sandboxes = new SandboxManager(
      this.state,
      this.pool,
      { log: opts.log, onExit: (id) => this.onSandboxGone(id) },
      undefined,
      opts.dnsUpstream,
    );
    this.metrics = new Metrics({
      snapshots: () => listSnapshots().length,
      sandboxes: () => this.sandboxes.live.size,
      branches: () => this.branches.count,
      cap: () => this.branches.concurrency,
      pool: () => this.pool.sizes(),
      workspaces: () => this.state.workspaces.size,
      egressRefused: () => this.sandboxes.egressRefused(),
    });
    this.branches = new BranchManager(this.state, this.sandboxes, opts.branchConcurrency, {
      log: opts.log,
      observe: (mode, pauseMs, totalMs, ok) => {
        if (ok) this.metrics.branchPause.observe({ mode }, pauseMs / 1000);
        this.metrics.branch.observe({ mode, result: ok ? 'ready' : 'failed' }, totalMs / 1000);
      },
    });
  }

  async start(): Promise<void> {
    this.state.load(this.opts.log);
    // Snapshots recorded as writing when the last daemon stopped never finished: their staging dirs
    // were never renamed into place, so they are failed, not ready.
    for (const r of this.state.snapshots.values())
      if (r.status === 'writing') {
        r.status = 'failed';
        r.warning = 'the daemon stopped while this snapshot was being written';
      }
    const { adopted, gone } = await this.sandboxes.adoptAll();
    // Whatever a killed daemon or CLI left (branch scratch dirs and their normalizing QEMUs and taps,
    // staging dirs, interrupted pulls): the same sweep as `forkd cleanup --yes`; live owners are skipped.
    for (const it of await cleanup(true))
      if (it.action !== 'SKIP') this.opts.log(`swept ${it.kind} ${it.path}: ${it.reason}`);
    if (adopted.length)
      this.opts.log(`re-adopted ${adopted.length} running sandbox(es): ${adopted.join(', ')}`);
    if (gone.length)
      this.opts.log(`${gone.length} sandbox(es) died while the daemon was down: ${gone.join(', ')}`);
    for (const w of this.state.workspaces.values())
      if (w.status === 'running' && (!w.live_sandbox_id || !this.sandboxes.live.has(w.live_sandbox_id))) {
        w.status = 'stale';
        w.live_sandbox_id = null;
      }
    this.state.save();
    this.reaper = setInterval(() => void this.sandboxes.reap(), 1000);
    this.reaper.unref();
  }

  /** Graceful stop: sandboxes keep running (a restarted daemon re-adopts them); pool children stop. */
  async stop(): Promise<void> {
    clearInterval(this.reaper);
    await this.pool.close();
    this.sandboxes.releaseAll();
    this.sandboxes.dns.closeAll();
    this.sandboxes.proxy.closeAll();
  }

  private onSandboxGone(id: string): void {
    for (const w of this.state.workspaces.values())
      if (w.live_sandbox_id === id) {
        w.status = 'stale';
        w.live_sandbox_id = null;
      }
  }

  // ---- snapshots ----

  listSnapshots(): SnapshotInfo[] {
    const out = new Map<string, SnapshotInfo>();
    for (const l of listSnapshots()) {
      const rec = this.state.snapshots.get(l.tag);
      const m = l.meta;
      const info: SnapshotInfo = {
        tag: l.tag,
        dir: l.dir,
        created_at_unix: m ? Math.floor(Date.parse(m.created_at) / 1000) : 0,
        status: m ? 'ready' : 'failed',
        bootable: !!m,
        ...(m?.origin.sandbox_id ? { branched_from: m.origin.sandbox_id } : {}),
        ...(m?.origin.mode ? { mode: m.origin.mode } : {}),
        ...(m?.origin.pause_ms != null ? { pause_ms: m.origin.pause_ms } : {}),
        ...(m?.files.memory.kind === 'diff' ? { diff_physical_bytes: m.files.memory.allocated } : {}),
        ...(l.error ? { warning: `snapshot is not bootable: ${l.error}` } : {}),
        ...(m?.lineage.parent_tag ? { parent_tag: m.lineage.parent_tag } : {}),
        ...(m
          ? {
              chain_depth: m.lineage.depth,
              accelerator: m.accelerator,
              memory_kind: m.files.memory.kind,
              net: m.machine.net,
            }
          : {}),
      };
      if (rec?.status === 'failed' && !m) info.warning = rec.warning ?? info.warning;
      out.set(l.tag, info);
    }
    for (const r of this.state.snapshots.values()) {
      if (out.has(r.tag)) continue;
      if (r.status === 'ready') continue; // deleted from disk since
      out.set(r.tag, {
        tag: r.tag,
        dir: '',
        created_at_unix: r.created_at_unix,
        status: r.status,
        bootable: false,
        ...(r.branched_from ? { branched_from: r.branched_from } : {}),
        ...(r.mode ? { mode: r.mode } : {}),
        ...(r.pause_ms !== null ? { pause_ms: r.pause_ms } : {}),
        ...(r.warning ? { warning: r.warning } : {}),
      });
    }
    for (const t of this.creating)
      if (!out.has(t))
        out.set(t, { tag: t, dir: '', created_at_unix: nowUnix(), status: 'writing', bootable: false });
    return [...out.values()].sort((a, b) => a.tag.localeCompare(b.tag));
  }

  snapshotInfo(tag: string): SnapshotInfo {
    validateTag(tag);
    const s = this.listSnapshots().find((x) => x.tag === tag);
    if (!s)
      throw new ForkdError('not_found', `no snapshot tagged '${tag}'`, 'list them with GET /v1/snapshots');
    return s;
  }

  beginCreate(tag: string): () => void {
    validateTag(tag);
    if (this.creating.has(tag) || this.branches.isWriting(tag))
      throw new ForkdError('conflict', `snapshot '${tag}' is already being written`);
    this.creating.add(tag);
    return () => this.creating.delete(tag);
  }

  deleteSnapshot(tag: string, opts: { cascade?: boolean; force?: boolean }): string[] {
    validateTag(tag);
    if (this.branches.isWriting(tag) || this.creating.has(tag))
      throw new ForkdError(
        'conflict',
        `snapshot '${tag}' is still being written; wait until it is ready or failed`,
      );
    if (!snapshotExists(tag) && this.state.snapshots.get(tag)?.status === 'failed') {
      this.state.snapshots.delete(tag);
      this.state.save();
      return [tag];
    }
    const users = [...this.sandboxes.live.values()]
      .filter((l) => l.rec.snapshot_tag === tag)
      .map((l) => l.rec.id);
    if (users.length && !opts.force)
      throw new ForkdError(
        'conflict',
        `snapshot '${tag}' is in use by running sandbox(es) ${users.join(', ')}`,
        'kill them first, or pass force=true (they keep running on the files they have open)',
      );
    const removed = deleteSnapshot(tag, opts);
    for (const t of removed) {
      this.state.snapshots.delete(t);
      void this.pool.drop(t);
    }
    this.state.save();
    return removed;
  }

  // ---- sandboxes ----

  async spawn(req: SpawnOptions & { n: number }): Promise<SpawnItem[]> {
    const tag = validateTag(req.snapshot_tag);
    if (!Number.isInteger(req.n) || req.n < 1 || req.n > MAX_CHILDREN)
      throw new ForkdError('bad_input', `n must be 1..${MAX_CHILDREN} (got ${req.n})`);
    if (this.branches.isWriting(tag) || this.creating.has(tag))
      throw new ForkdError(
        'conflict',
        `snapshot '${tag}' is still being written; spawn when its status is "ready"`,
      );
    const source = await this.sandboxes.resolveSnapshot(tag);
    preflight(req.n, source.s, runDir());
    if (req.volumes?.length) checkOverrides(source.volumes, req.volumes, tag);
    const items: SpawnItem[] = new Array(req.n);
    let next = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= req.n) return;
        try {
          const r = await this.sandboxes.spawnOne(source, req);
          this.metrics.spawn.observe({ from_pool: String(r.timings.from_pool) }, r.timings.ready_ms / 1000);
          items[i] = { ok: true, ...this.sandboxInfo(r.rec), timings: r.timings };
        } catch (e) {
          items[i] = { ok: false, snapshot_tag: tag, error: errorMessage(e) };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(req.n, SPAWN_CONCURRENCY) }, worker));
    this.pool.refill(tag);
    return items;
  }

  sandboxInfo(rec: SandboxRecord): SandboxInfo {
    const live = this.sandboxes.live.get(rec.id) ?? this.sandboxes.exited.get(rec.id);
    return {
      id: rec.id,
      snapshot_tag: rec.snapshot_tag,
      status: live?.exited ? 'exited' : 'running',
      ...(live?.exited ? { exit_reason: live.exited.reason } : {}),
      netns: rec.netns,
      guest_addr: rec.guest_addr,
      network: rec.egress,
      network_summary: rec.netns ? describePolicy(rec.egress) : 'no network',
      created_at_unix: rec.created_at_unix,
      pid: live?.exited ? null : rec.pid,
      memory_limit_mib: rec.memory_limit_mib,
      has_branched: rec.has_branched,
      last_branch_memory_path: rec.last_branch_memory_path,
      branch_count: rec.branch_count,
      timeout_secs: rec.timeout_secs,
      expires_at_unix: rec.expires_at_unix,
      metadata: rec.metadata,
      workspace: rec.workspace,
    };
  }

  listSandboxes(): SandboxInfo[] {
    const all = [...this.sandboxes.live.values(), ...this.sandboxes.exited.values()];
    return all
      .map((l) => this.sandboxInfo(l.rec))
      .sort((a, b) => a.created_at_unix - b.created_at_unix || a.id.localeCompare(b.id));
  }

  /**
   * Replace a sandbox's egress policy. The change is recorded in the audit log (who, which sandbox,
   * the old and the new policy): request lines alone do not carry bodies.
   */
  async setSandboxNetwork(id: string, policy: Partial<EgressPolicy>, remote: string): Promise<SandboxInfo> {
    const before = this.sandboxes.find(id).rec.egress;
    const after = await this.sandboxes.setEgress(id, policy);
    this.audit.emit('event', { event: 'egress_policy_set', sandbox: id, remote, before, after });
    return this.getSandbox(id);
  }

  getSandbox(id: string): SandboxInfo {
    const l = this.sandboxes.live.get(id) ?? this.sandboxes.exited.get(id);
    if (!l)
      throw new ForkdError('not_found', `sandbox ${id} not found`, 'list sandboxes with GET /v1/sandboxes');
    return this.sandboxInfo(l.rec);
  }

  // ---- workspaces ----

  private ws(name: string): WorkspaceRecord {
    const w = this.state.workspaces.get(name);
    if (!w)
      throw new ForkdError('not_found', `workspace '${name}' not found`, 'list them with GET /v1/workspaces');
    return w;
  }

  workspaceInfo(w: WorkspaceRecord): WorkspaceInfo {
    const { envs: _e, suspend_count: _s, ...rest } = w;
    return rest;
  }

  listWorkspaces(): WorkspaceInfo[] {
    return [...this.state.workspaces.values()]
      .map((w) => this.workspaceInfo(w))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  getWorkspace(name: string): WorkspaceInfo {
    return this.workspaceInfo(this.ws(validateTag(name)));
  }

  private async spawnForWorkspace(w: WorkspaceRecord, tag: string): Promise<string> {
    const [item] = await this.spawn({
      snapshot_tag: tag,
      n: 1,
      // Otherwise what the state snapshot carries: the network and policy its last sandbox had.
      per_child_netns: w.per_child_netns ? true : undefined,
      egress: tag === w.source_snapshot_tag ? (w.egress ?? undefined) : undefined,
      memory_limit_mib: w.memory_limit_mib,
      timeout_secs: null,
      envs: w.envs,
      metadata: { workspace: w.name },
      workspace: w.name,
    });
    if (!item!.ok) throw new ForkdError('vmm_failed', `workspace '${w.name}': ${item!.error}`);
    return item!.id!;
  }

  async createWorkspace(req: {
    name: string;
    snapshot_tag: string;
    per_child_netns: boolean;
    egress?: EgressPolicy | undefined;
    memory_limit_mib: number | null;
    envs: Record<string, string>;
  }): Promise<WorkspaceInfo> {
    const name = validateTag(req.name);
    validateTag(req.snapshot_tag);
    if (this.state.workspaces.has(name)) throw new ForkdError('exists', `workspace '${name}' already exists`);
    loadSnapshot(req.snapshot_tag);
    const now = nowUnix();
    const w: WorkspaceRecord = {
      id: '',
      name,
      source_snapshot_tag: req.snapshot_tag,
      current_state_tag: null,
      status: 'running',
      live_sandbox_id: null,
      created_at_unix: now,
      last_active_unix: now,
      last_branch_memory_path: null,
      per_child_netns: req.per_child_netns,
      egress: req.egress ? normalizePolicy(req.egress) : null,
      memory_limit_mib: req.memory_limit_mib,
      envs: req.envs,
      suspend_count: 0,
    };
    const id = await this.spawnForWorkspace(w, req.snapshot_tag);
    w.id = `ws-${id.slice(3, 19)}`;
    w.live_sandbox_id = id;
    this.state.workspaces.set(name, w);
    this.state.save();
    return this.workspaceInfo(w);
  }

  /**
   * Snapshot the workspace's sandbox into a new state tag, then stop the sandbox. The new state is
   * complete before anything old is removed; a full state replaces the previous one, a diff state
   * stacks on it (its parent), so older diff states stay until the workspace is deleted.
   */
  async suspendWorkspace(name: string, diff: boolean): Promise<WorkspaceInfo> {
    const w = this.ws(validateTag(name));
    if (w.status !== 'running' || !w.live_sandbox_id)
      throw new ForkdError(
        'bad_input',
        `workspace '${name}' is ${w.status}, not running`,
        w.status === 'suspended' ? 'resume it first' : 'resume it to start a sandbox',
      );
    const sb = w.live_sandbox_id;
    const stateTag = `ws-${name}-s${w.suspend_count + 1}`.slice(0, 64);
    const out = await this.branches.branch(sb, { tag: stateTag, mode: diff ? 'diff' : 'full' });
    const rec = await out.finished;
    if (rec.status !== 'ready')
      throw new ForkdError('vmm_failed', `suspending workspace '${name}' failed: ${rec.warning}`);
    await this.sandboxes.destroy(sb);
    const previous = w.current_state_tag;
    w.current_state_tag = stateTag;
    w.suspend_count += 1;
    w.status = 'suspended';
    w.live_sandbox_id = null;
    w.last_active_unix = nowUnix();
    w.last_branch_memory_path = path.join(out.started.dir, diff ? 'memory.diff' : 'memory.bin');
    this.state.save();
    if (previous && !diff) {
      try {
        this.deleteSnapshot(previous, { cascade: false });
      } catch (e) {
        this.opts.log(`workspace ${name}: kept old state ${previous}: ${errorMessage(e)}`);
      }
    }
    return this.workspaceInfo(w);
  }

  async resumeWorkspace(name: string): Promise<WorkspaceInfo> {
    const w = this.ws(validateTag(name));
    if (w.status === 'running')
      throw new ForkdError(
        'bad_input',
        `workspace '${name}' is already running (sandbox ${w.live_sandbox_id})`,
      );
    const id = await this.spawnForWorkspace(w, w.current_state_tag ?? w.source_snapshot_tag);
    w.live_sandbox_id = id;
    w.status = 'running';
    w.last_active_unix = nowUnix();
    this.state.save();
    return this.workspaceInfo(w);
  }

  async deleteWorkspace(name: string): Promise<void> {
    const w = this.ws(validateTag(name));
    if (w.live_sandbox_id && this.sandboxes.live.has(w.live_sandbox_id))
      await this.sandboxes.destroy(w.live_sandbox_id);
    // Its state snapshots (never the source): cascade, since diff states form a chain.
    for (const t of listSnapshots().map((l) => l.tag))
      if (t.startsWith(`ws-${name}-s`) && snapshotExists(t)) {
        try {
          this.deleteSnapshot(t, { cascade: true });
        } catch (e) {
          this.opts.log(`workspace ${name}: cannot delete state ${t}: ${errorMessage(e)}`);
        }
      }
    this.state.workspaces.delete(name);
    this.state.save();
  }
}
