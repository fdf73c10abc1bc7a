import type { VolumeSpec } from '../snapshot/volumes.js';
import path from 'node:path';
import { ForkdError, errorMessage } from '../util/errors.js';
import { pidStartTime, sameProcessAlive } from '../util/proc.js';
import type { QemuVm } from '../vmm/qemu.js';
import { GUEST_IP } from '../vmm/qemu-argv.js';
import { vmDir } from '../vmm/jail.js';
import type { AgentClient } from '../agent-client/client.js';
import type { GuestSession } from '../agent-client/guest-session.js';
import type { IdentityResult } from '../protocol/agent-api.js';
import { allocIndex, netFor, type ChildNet } from '../network/netns.js';
import { SandboxDns } from '../network/dns.js';
import { EgressProxy } from '../network/egress-proxy.js';
import { applyEgress, refusedPackets } from '../network/egress-rules.js';
import { normalizePolicy, OPEN_POLICY, type EgressPolicy } from '../network/egress-policy.js';
import type { SnapshotMeta } from '../snapshot/metadata.js';
import { oomKilled } from '../host/cgroup.js';
import {
  adoptChild,
  releaseChild,
  resolveSource,
  startChild,
  type Child,
  type ChildResources,
  type ChildSource,
  type ChildTimings,
  type PreparedChild,
  type StartOptions,
} from '../engine/child.js';
import { prepareSandbox, type WarmPool } from '../engine/pool.js';
import { sweepChildDirs } from '../engine/sweep.js';
import type { SandboxRecord, StateStore } from './state.js';

export interface SpawnOptions {
  snapshot_tag: string;
  /** Its own network namespace; undefined: what the snapshot says (SnapshotMeta.network), else none. */
  per_child_netns?: boolean | undefined;
  /** Where it may connect out to; undefined: the snapshot's policy (a fork keeps its source's). */
  egress?: EgressPolicy | undefined;
  memory_limit_mib: number | null;
  timeout_secs: number | null;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  workspace?: string | null;
  template_id?: string | null;
  /** Other files for the snapshot's volumes (engine/volumes.ts), checked by the route. */
  volumes?: VolumeSpec[] | undefined;
}

export type SpawnTimings = ChildTimings;

export interface LiveSandbox {
  rec: SandboxRecord;
  vm: QemuVm;
  /** The agent and Python connections, each made on first use and remade when it broke. */
  guest: GuestSession;
  /** set while a branch or suspend holds the sandbox */
  busy: string | null;
  exited?: { reason: string; at_unix: number };
}

/**
 * The parts of the child engine the manager uses. The real one by default; unit tests hand in their own
 * to test the manager's bookkeeping without VMs.
 */
export interface SandboxEngine {
  prepare(source: ChildSource, volumes?: VolumeSpec[]): Promise<PreparedChild>;
  start(p: PreparedChild, opts: StartOptions): Promise<Child>;
  adopt(res: ChildResources, info: Parameters<typeof adoptChild>[1]): Promise<Child>;
  release(res: ChildResources): Promise<void>;
}

const childEngine: SandboxEngine = {
  prepare: (source, volumes) => prepareSandbox(source, undefined, volumes),
  start: startChild,
  adopt: adoptChild,
  release: releaseChild,
};

export interface ManagerEvents {
  log: (msg: string) => void;
  onExit?: (id: string, reason: string) => void;
}

const nowUnix = () => Math.floor(Date.now() / 1000);

/** The sandbox's uplink (addresses of its /30), when it has a namespace. */
function uplinkOf(rec: SandboxRecord): ChildNet | undefined {
  return rec.netns && rec.net_index !== null ? netFor(rec.id, rec.net_index) : undefined;
}

/**
 * A spawn's network: the request's choices over what the snapshot carries. A policy implies a
 * namespace (it is enforced there); a snapshot's policy is validated again (packs are untrusted).
 */
export function effectiveNetwork(
  fromSnapshot: SnapshotMeta['network'],
  req: Pick<SpawnOptions, 'per_child_netns' | 'egress'>,
): { netns: boolean; egress: EgressPolicy | null } {
  const egress =
    req.egress !== undefined
      ? normalizePolicy(req.egress)
      : fromSnapshot?.egress
        ? normalizePolicy(fromSnapshot.egress)
        : null;
  const netns = req.per_child_netns ?? (egress !== null || fromSnapshot?.netns === true);
  if (!netns && req.egress !== undefined)
    throw new ForkdError(
      'bad_input',
      'an egress policy needs a network namespace, but per_child_netns is false',
      'drop "per_child_netns": false (a policy gives the sandbox its own namespace)',
    );
  return { netns, egress: netns ? egress : null };
}

/**
 * Owns every sandbox: spawning (from the warm pool when it can), the agent connection (one HTTP/2
 * session per sandbox, reconnected on demand), network namespace, memory cgroup, TTL, teardown, and
 * re-adopting sandboxes that outlived a previous daemon.
 */
export class SandboxManager {
  readonly live = new Map<string, LiveSandbox>();
  /** Sandboxes that died on their own (OOM, crash): kept briefly so clients see why. */
  readonly exited = new Map<string, LiveSandbox>();

  /** Each networked sandbox's resolver and SNI/Host check (they enforce its policy's domain entries). */
  readonly dns: SandboxDns;
  readonly proxy: EgressProxy;

  constructor(
    private readonly state: StateStore,
    private readonly pool: WarmPool,
    private readonly ev: ManagerEvents,
    private readonly engine: SandboxEngine = childEngine,
    dnsUpstream?: string[],
  ) {
    this.dns = new SandboxDns({
      view: (id) => {
        const rec = this.live.get(id)?.rec;
        return rec?.netns ? { policy: rec.egress ?? OPEN_POLICY, netns: rec.netns } : undefined;
      },
      log: ev.log,
      upstream: dnsUpstream,
    });
    this.proxy = new EgressProxy({
      view: (id) => {
        const rec = this.live.get(id)?.rec;
        return rec?.netns ? { policy: rec.egress ?? OPEN_POLICY } : undefined;
      },
      resolve: (name) => this.dns.lookup4(name),
      log: ev.log,
    });
  }

  /** Start the sandbox's resolver; a sandbox without one still runs (its DNS goes unanswered). */
  private async openDns(rec: SandboxRecord): Promise<void> {
    const up = uplinkOf(rec);
    if (!up) return;
    await this.dns.open(rec.id, up.hostAddr).catch((e: unknown) => {
      this.ev.log(`sandbox ${rec.id}: no resolver on ${up.hostAddr}:53: ${errorMessage(e)}`);
    });
    await this.proxy.open(rec.id, up.hostAddr).catch((e: unknown) => {
      this.ev.log(`sandbox ${rec.id}: no egress proxy on ${up.hostAddr}: ${errorMessage(e)}`);
    });
  }

  /** The snapshot to spawn from, checked and with its memory image resolved (assembled for chains). */
  resolveSnapshot(tag: string): Promise<ChildSource> {
    // Sandboxes map a tmpfs copy: live branching write-protects RAM with userfaultfd, which needs shmem.
    return resolveSource(tag, 'resident');
  }

  async spawnOne(
    source: ChildSource,
    opts: SpawnOptions,
  ): Promise<{ rec: SandboxRecord; timings: SpawnTimings; identity: IdentityResult }> {
    const t0 = performance.now();
    const s = source.s;
    // A sandbox with its own volume files is prepared for it: pooled children have the snapshot's.
    let prepared = opts.volumes?.length ? undefined : this.pool.take(source);
    const fromPool = prepared !== undefined;
    if (!prepared) prepared = await this.engine.prepare(source, opts.volumes);
    const network = effectiveNetwork(s.meta.network, opts);
    let netIndex: number | undefined;
    if (network.netns) netIndex = this.allocNetIndex();
    try {
      const child = await this.engine.start(prepared, {
        netIndex,
        egress: network.egress ?? undefined,
        memoryLimitMib: opts.memory_limit_mib,
        t0,
        fromPool,
      });
      const { res, vm } = child;
      const created = nowUnix();
      const rec: SandboxRecord = {
        id: res.id,
        snapshot_tag: s.tag,
        created_at_unix: created,
        pid: vm.pid,
        pid_start: pidStartTime(vm.pid) ?? null,
        work_dir: res.work_dir,
        memory_file: source.memoryFile,
        active_disk: child.disk,
        python_port: child.guest?.hasPythonPort ?? false,
        disk_generation: 0,
        tap: res.tap,
        netns: res.netns,
        net_index: res.net_index,
        guest_addr: res.tap ? GUEST_IP : null,
        memory_limit_mib: opts.memory_limit_mib,
        cgroup: res.cgroup,
        has_branched: false,
        last_branch_memory_path: null,
        branch_count: 0,
        timeout_secs: opts.timeout_secs,
        expires_at_unix: opts.timeout_secs ? created + opts.timeout_secs : null,
        envs: opts.envs,
        metadata: opts.metadata,
        workspace: opts.workspace ?? null,
        template_id: opts.template_id ?? null,
        access_token: null,
        paused_at_unix: null,
        egress: res.netns ? (network.egress ?? OPEN_POLICY) : null,
      };
      const live: LiveSandbox = { rec, vm, guest: child.guest!, busy: null };
      this.live.set(res.id, live);
      await this.openDns(rec);
      this.watchExit(live);
      this.state.sandboxes.set(res.id, rec);
      this.state.save();
      return { rec, identity: child.identity!, timings: child.timings! };
    } finally {
      if (netIndex !== undefined) this.reservedNet.delete(netIndex);
    }
  }

  /** Net slots taken by spawns still in progress (not yet in the state). */
  private readonly reservedNet = new Set<number>();

  private allocNetIndex(): number {
    const used: number[] = [...this.reservedNet];
    for (const r of this.state.sandboxes.values()) if (r.net_index !== null) used.push(r.net_index);
    const i = allocIndex(used);
    this.reservedNet.add(i);
    return i;
  }

  private watchExit(live: LiveSandbox): void {
    void live.vm.exited.then(async () => {
      if (this.live.get(live.rec.id) !== live) return; // destroyed on purpose
      const reason = live.rec.cgroup && oomKilled(live.rec.cgroup) ? 'oom-killed (memory limit)' : 'exited';
      this.ev.log(`sandbox ${live.rec.id} ${reason}`);
      live.guest.close();
      this.dns.forget(live.rec.id);
      this.proxy.forget(live.rec.id);
      live.exited = { reason, at_unix: nowUnix() };
      this.live.delete(live.rec.id);
      this.exited.set(live.rec.id, live);
      await this.release(live.rec);
      this.state.sandboxes.delete(live.rec.id);
      this.state.save();
      this.ev.onExit?.(live.rec.id, reason);
    });
  }

  /** A running sandbox to work with (exec, files, branch...): a paused one is a conflict. */
  get(id: string): LiveSandbox {
    const l = this.find(id);
    if (l.rec.paused_at_unix !== null)
      throw new ForkdError('conflict', `sandbox ${id} is paused`, 'resume it first (E2B: Sandbox.connect)');
    return l;
  }

  /** The live sandbox, paused or not. */
  find(id: string): LiveSandbox {
    const l = this.live.get(id);
    if (l) return l;
    const dead = this.exited.get(id);
    if (dead)
      throw new ForkdError(
        'conflict',
        `sandbox ${id} is no longer running: ${dead.exited!.reason}`,
        'spawn a new sandbox; DELETE this one to forget it',
      );
    throw new ForkdError('not_found', `sandbox ${id} not found`, 'list sandboxes with GET /v1/sandboxes');
  }

  /** The sandbox's agent connection (made on first use, remade if it broke). */
  agent(id: string): Promise<AgentClient> {
    return this.get(id).guest.agent();
  }

  /** Packets refused before the current policy's table was made (replacing it resets nft's counter). */
  private readonly refusedBefore = new Map<string, number>();

  /**
   * Replace a sandbox's egress policy, atomically (one nftables transaction in its namespace). Paused
   * sandboxes too: the policy holds when they resume.
   */
  async setEgress(id: string, policy: Partial<EgressPolicy>): Promise<EgressPolicy> {
    const l = this.find(id);
    const { netns, tap } = l.rec;
    if (!netns || !tap)
      throw new ForkdError(
        'conflict',
        `sandbox ${id} has no network namespace, so it has no network to restrict`,
        'spawn it with per_child_netns (or with an egress policy) to give it a network',
      );
    const p = normalizePolicy(policy);
    const before = await refusedPackets(netns);
    await applyEgress(netns, tap, p, { dnsServer: uplinkOf(l.rec)?.hostAddr });
    this.dns.policyReplaced(id);
    if (before) this.refusedBefore.set(id, (this.refusedBefore.get(id) ?? 0) + before);
    l.rec.egress = p;
    this.state.save();
    return p;
  }

  async egressRefused(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    await Promise.all(
      [...this.live.values()].map(async (l) => {
        if (!l.rec.netns) return;
        const n = await refusedPackets(l.rec.netns);
        // Packets refused in the namespace, plus connections the SNI/Host check closed.
        if (n !== undefined)
          out[l.rec.id] =
            n + (this.refusedBefore.get(l.rec.id) ?? 0) + (this.proxy.refused.get(l.rec.id) ?? 0);
      }),
    );
    return out;
  }

  /** Kill a sandbox and free everything it had. */
  async destroy(id: string): Promise<void> {
    const l = this.live.get(id);
    if (!l) {
      if (this.exited.delete(id)) return;
      throw new ForkdError('not_found', `sandbox ${id} not found`, 'list sandboxes with GET /v1/sandboxes');
    }
    if (l.busy)
      throw new ForkdError('conflict', `sandbox ${id} is busy (${l.busy}); try again when it finishes`);
    this.live.delete(id);
    this.refusedBefore.delete(id);
    this.dns.forget(id);
    this.proxy.forget(id);
    l.guest.close();
    await l.vm.destroy();
    await this.release(l.rec);
    this.state.sandboxes.delete(id);
    this.state.save();
  }

  /** Free what a sandbox's child held (the engine's record of it is part of the sandbox record). */
  private release(rec: SandboxRecord): Promise<void> {
    return this.engine.release(resourcesOf(rec));
  }

  /**
   * After a daemon (re)start: take over every recorded sandbox whose QEMU still runs (QMP reconnect;
   * the agent reconnects on first use), and clean up after those that died meanwhile. Work dirs of
   * sandboxes the state does not know (a crash mid-spawn, old pool children) are removed.
   */
  async adoptAll(): Promise<{ adopted: string[]; gone: string[] }> {
    const adopted: string[] = [];
    const gone: string[] = [];
    for (const rec of [...this.state.sandboxes.values()]) {
      const alive = sameProcessAlive({ pid: rec.pid, start: rec.pid_start ?? undefined });
      if (alive) {
        try {
          const child = await this.engine.adopt(resourcesOf(rec), {
            pid: rec.pid,
            pidStart: rec.pid_start ?? undefined,
            memoryFile: rec.memory_file,
            activeDisk: rec.active_disk,
            pythonPort: rec.python_port,
          });
          const live: LiveSandbox = { rec, vm: child.vm, guest: child.guest!, busy: null };
          this.live.set(rec.id, live);
          this.watchExit(live);
          await this.openDns(rec);
          adopted.push(rec.id);
          continue;
        } catch (e) {
          this.ev.log(
            `sandbox ${rec.id}: QEMU runs but its QMP socket does not answer (${errorMessage(e)}); killing it`,
          );
          try {
            process.kill(rec.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
      gone.push(rec.id);
      await this.release(rec);
      this.state.sandboxes.delete(rec.id);
    }
    this.state.save();
    await this.sweepOrphanDirs();
    return { adopted, gone };
  }

  /** Sandbox dirs the state does not know (a crash mid-spawn, old pool children): the one sweeper. */
  private async sweepOrphanDirs(): Promise<void> {
    const known = new Set([...this.state.sandboxes.values()].map((r) => r.work_dir));
    for (const dir of await sweepChildDirs({ keep: known, apply: true }))
      this.ev.log(`removed leftover sandbox dir ${dir}`);
  }

  /**
   * Stop the sandbox's vCPUs (QMP stop): it keeps its memory and processes, costs no CPU and answers
   * nothing until resumed; its timeout does not run meanwhile. False when it was paused already.
   */
  async pause(id: string): Promise<boolean> {
    const l = this.find(id);
    if (l.rec.paused_at_unix !== null) return false;
    if (l.busy)
      throw new ForkdError('conflict', `sandbox ${id} is busy (${l.busy}); try again when it finishes`);
    l.busy = 'pause';
    try {
      // The guest connections stay: idle, they survive the pause; a stream that was open fails its
      // liveness pings if the pause is long, and the next use after resume makes a new connection.
      await l.vm.pause();
      l.rec.paused_at_unix = nowUnix();
      this.state.save();
    } finally {
      l.busy = null;
    }
    return true;
  }

  /**
   * Run a paused sandbox again, its timeout restarting at `timeoutSecs` (null: none). The guest's clock
   * stood still while paused, so it is told the time again. False when it was not paused.
   */
  async resume(id: string, timeoutSecs: number | null): Promise<boolean> {
    const l = this.find(id);
    if (l.rec.paused_at_unix === null) return false;
    if (l.busy)
      throw new ForkdError('conflict', `sandbox ${id} is busy (${l.busy}); try again when it finishes`);
    l.busy = 'resume';
    try {
      await l.vm.resume();
      l.rec.paused_at_unix = null;
      l.rec.timeout_secs = timeoutSecs;
      l.rec.expires_at_unix = timeoutSecs === null ? null : nowUnix() + timeoutSecs;
      this.state.save();
    } finally {
      l.busy = null;
    }
    const py = l.guest.python();
    await (py ? py.then((p) => p.announce(id)) : l.guest.agent().then((a) => a.announce(id))).catch((e) =>
      this.ev.log(`sandbox ${id}: resumed, but telling it the time failed: ${errorMessage(e)}`),
    );
    return true;
  }

  /** Kill sandboxes whose timeout passed; forget exited ones after 10 minutes. */
  async reap(): Promise<string[]> {
    const now = nowUnix();
    const killed: string[] = [];
    for (const l of [...this.live.values()]) {
      const paused = l.rec.paused_at_unix !== null;
      if (l.rec.expires_at_unix !== null && l.rec.expires_at_unix <= now && !l.busy && !paused) {
        this.ev.log(`sandbox ${l.rec.id} reached its timeout; killing it`);
        await this.destroy(l.rec.id).catch(() => {});
        killed.push(l.rec.id);
      }
    }
    for (const [id, l] of this.exited) if (now - l.exited!.at_unix > 600) this.exited.delete(id);
    return killed;
  }

  /** The overlay QEMU currently writes for the root disk (it changes with every branch). */
  async activeDisk(live: LiveSandbox): Promise<string> {
    const blocks =
      await live.vm.qmp!.execute<Array<{ device: string; inserted?: { file: string } }>>('query-block');
    const root = blocks.find((b) => b.device === 'root');
    const file = root?.inserted?.file;
    if (!file) throw new ForkdError('vmm_failed', `sandbox ${live.rec.id}: QEMU reports no root disk`);
    // QEMU's word is untrusted: its disk is its own overlay, in its work dir or its own vm/ dir.
    const dir = path.dirname(path.resolve(file));
    if (dir !== path.resolve(live.rec.work_dir) && dir !== path.resolve(vmDir(live.rec.work_dir)))
      throw new ForkdError(
        'vmm_failed',
        `sandbox ${live.rec.id}: QEMU reports a root disk outside its work dir (${file})`,
      );
    if (file !== live.rec.active_disk) {
      live.rec.active_disk = file;
      this.state.save();
    }
    return file;
  }

  setTimeout(id: string, secs: number | null): SandboxRecord {
    const l = this.find(id);
    l.rec.timeout_secs = secs;
    l.rec.expires_at_unix = secs === null ? null : nowUnix() + secs;
    this.state.save();
    return l.rec;
  }

  /** Leave every sandbox running and drop our handles (graceful daemon shutdown). */
  releaseAll(): void {
    for (const l of this.live.values()) {
      l.guest.close();
      l.vm.release();
    }
    this.state.save();
  }
}

/** The host resources of a sandbox, as the engine records them. */
function resourcesOf(rec: SandboxRecord): ChildResources {
  return {
    id: rec.id,
    work_dir: rec.work_dir,
    tap: rec.tap,
    netns: rec.netns,
    net_index: rec.net_index,
    cgroup: rec.cgroup,
  };
}
