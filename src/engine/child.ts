import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { freeBytes } from '../util/fs.js';
import { memAvailableMib } from '../util/proc.js';
import { QemuVm, QemuVmm, workPaths, type PendingRestore } from '../vmm/qemu.js';
import type { MachineConfig, RestoreTimings, Vmm } from '../vmm/types.js';
import { SignalChannel } from '../vmm/signal.js';
import { RUN_SIGNAL } from '../image/firmware.js';
import { AgentClient } from '../agent-client/client.js';
import { PythonPort } from '../agent-client/python-port.js';
import { GuestSession } from '../agent-client/guest-session.js';
import type { IdentityResult } from '../protocol/agent-api.js';
import { createTap, deleteLink } from '../network/tap.js';
import { netFor, setupChildNet, teardownChildNet } from '../network/netns.js';
import { applyEgress } from '../network/egress-rules.js';
import { OPEN_POLICY, type EgressPolicy } from '../network/egress-policy.js';
import { limitMemory, removeCgroup } from '../host/cgroup.js';
import { jailEnabled, readJailRecord, releaseJail } from '../vmm/jail.js';
import { currentAccel, kvmOpenError } from '../host/accel.js';
import { missingCpuFeatures } from '../host/cpu.js';
import { loadSnapshot, machineOf, type LoadedSnapshot } from '../snapshot/store.js';
import {
  diskImage,
  memoryImage,
  overlayTemplate,
  residentImage,
  resolveChain,
} from '../snapshot/assemble.js';
import { readChildRecord, writeChildRecord as writeRecord, type ChildResources } from '../host/records.js';
import {
  childVolumes,
  releaseWriterLocks,
  sourceVolumes,
  type SourceVolume,
  type VolumeMount,
} from './volumes.js';
import type { VolumeSpec } from '../snapshot/volumes.js';

export { readChildRecord, type ChildResources };

/**
 * The child engine: the one way a child VM starts and ends, for every caller (the one-shot `forkd fork`,
 * the daemon's sandboxes and warm pool, snapshot-diff, workspaces, benches).
 *
 * A child is built in two steps, so a warm pool can do the first ahead of time:
 *   prepareChild: work dir, disk overlay, tap, QEMU started with the snapshot's RAM mapped and its
 *                 device state loaded (`-incoming defer`, then the state), paused;
 *   startChild:   memory cgroup, network namespace, `cont`, agent resync, identity.
 * Every host resource it takes is written to its record (`child.json` in its work dir) as soon as it
 * exists, so `destroy()`, `releaseChild()` after a crash, and the sweeper all free exactly what it had.
 */

/** One set of timing names for every caller; `ready_ms` is wall time from the start to identity answered. */
export interface ChildTimings {
  spawn_ms: number;
  load_ms: number;
  cont_ms: number;
  agent_ms: number;
  identity_ms: number;
  ready_ms: number;
  from_pool: boolean;
}

/**
 * A snapshot made ready to start children from: checked against this host, its memory image resolved
 * (assembled for a chain) and a disk overlay template made once for all its children.
 */
export interface ChildSource {
  s: LoadedSnapshot;
  machine: MachineConfig;
  accel: string;
  accelReason: string;
  memoryFile: string;
  diskImage: string;
  /** An empty overlay over diskImage, copied for each child (see overlayTemplate). */
  overlayTemplate: string;
  /** which snapshot content it is (a re-created tag must not get an old prepared child) */
  key: string;
  /** The snapshot's volumes (each child stacks its own layer or lock on them). */
  volumes: SourceVolume[];
}

/** Children per request (CLI `-n`, REST `n`). */
export const MAX_CHILDREN = 1000;
/** Children started at once by any caller; FORKD_SPAWN_CONCURRENCY overrides. */
export const SPAWN_CONCURRENCY = Number(process.env.FORKD_SPAWN_CONCURRENCY) || 16;
export const SANDBOX_DIR_PREFIX = 'forkd-sb-';

export function snapshotKey(s: LoadedSnapshot): string {
  return `${s.tag}:${s.meta.files.vmstate.sha256}:${s.meta.files.memory.sha256}`;
}

/** Refuse snapshots this host cannot restore faithfully: other accelerator, other QEMU. */
export async function checkCompatible(
  s: LoadedSnapshot,
  vmm: QemuVmm = new QemuVmm(),
): Promise<{ accel: string; reason: string }> {
  const qemu = await vmm.version();
  if (qemu !== s.meta.vmm.version)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' was saved by QEMU ${s.meta.vmm.version}; this host has QEMU ${qemu}, which may not load its device state`,
      `re-create the snapshot here: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}`,
    );
  const cpu = s.meta.vmm.cpu;
  const missing = cpu ? missingCpuFeatures(cpu) : [];
  if (missing.length)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' was saved under KVM on a CPU (${cpu!.model}) with features this host's CPU lacks: ${missing.join(', ')}; its guest already chose code paths that use them`,
      `re-create the snapshot on this host: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}`,
    );
  if (s.meta.machine.firmware) return firmwareAccel(s);
  const probe = await currentAccel();
  if (probe.accel !== s.meta.accelerator)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' was made under ${s.meta.accelerator}, but this host runs guests under ${probe.accel} (${probe.reason}); device state does not carry across accelerators`,
      `re-create the snapshot on this host: forkd rmi ${s.tag} && forkd snapshot --tag ${s.tag}`,
    );
  return { accel: probe.accel, reason: probe.reason };
}

/** A firmware guest needs no stock-kernel support: under kvm, an accessible /dev/kvm is enough. */
function firmwareAccel(s: LoadedSnapshot): { accel: string; reason: string } {
  if (s.meta.accelerator === 'tcg') return { accel: 'tcg', reason: 'firmware guest saved under tcg' };
  const openError = kvmOpenError();
  if (openError)
    throw new ForkdError(
      'incompatible_snapshot',
      `snapshot '${s.tag}' is a kvm firmware guest, but /dev/kvm cannot be opened here: ${openError}`,
      'run it on a host with KVM, or re-create it here under tcg',
    );
  return { accel: 'kvm', reason: 'firmware guest: /dev/kvm accessible' };
}

/**
 * Resolve a snapshot for starting children. `memory: 'resident'` maps a tmpfs copy of the image (the
 * daemon: live branching needs shmem-backed RAM for userfaultfd write protection); `'file'` maps the
 * image on disk (one-shot forks: nothing to copy first).
 */
export async function resolveSource(
  tagOrSnapshot: string | LoadedSnapshot,
  memory: 'resident' | 'file',
): Promise<ChildSource> {
  const s = typeof tagOrSnapshot === 'string' ? loadSnapshot(tagOrSnapshot) : tagOrSnapshot;
  const chain = resolveChain(s);
  const { accel, reason } = await checkCompatible(s);
  const disk = await diskImage(s, chain);
  return {
    s,
    machine: machineOf(s),
    accel,
    accelReason: reason,
    memoryFile: memory === 'resident' ? await residentImage(s, chain) : await memoryImage(s, chain),
    diskImage: disk,
    overlayTemplate: await overlayTemplate(s, disk),
    key: snapshotKey(s),
    volumes: sourceVolumes(s),
  };
}

/**
 * Refuse a batch this host cannot hold before starting any of it: n children's private memory (rough:
 * QEMU, TCG code cache, guest copy-on-write) and their overlays' disk. Every caller asks the same.
 */
export function preflight(n: number, s: LoadedSnapshot, workRoot: string): void {
  // Rough private memory per child: QEMU itself + TCG code cache + guest CoW (spike §6.5).
  const perChildMib = s.meta.accelerator === 'tcg' ? 80 : 24;
  const availMib = memAvailableMib();
  if (availMib !== undefined && n * perChildMib > availMib * 0.9)
    throw new ForkdError(
      'out_of_space',
      `not enough memory for ${n} children: ~${perChildMib} MiB each under ${s.meta.accelerator} needs ~${n * perChildMib} MiB, ${availMib} MiB available`,
      `fork fewer children (at most ~${Math.floor((availMib * 0.9) / perChildMib)}) or free memory`,
    );
  const needDisk = 64 * 1048576 + n * 4 * 1048576;
  const free = freeBytes(workRoot);
  if (free < needDisk)
    throw new ForkdError(
      'out_of_space',
      `not enough free disk in ${workRoot} for ${n} child overlays (need ~${Math.ceil(needDisk / 1048576)} MiB, ${Math.floor(free / 1048576)} MiB free)`,
      'free space there or set FORKD_RUN_DIR to a larger filesystem',
    );
}

/** 12 hex characters derived from a child id: host interface names are at most 15 bytes. */
function shortId(id: string): string {
  return createHash('sha256').update(id).digest('hex').slice(0, 12);
}

export function tapName(id: string): string {
  return `fk${shortId(id)}`;
}

/** Free every host resource a child had, in reverse order of setup. Idempotent; the VM must be gone. */
export async function releaseChild(res: ChildResources): Promise<void> {
  // The namespace's name comes from the record (never recomputed), so older records free theirs too.
  if (res.netns && res.net_index !== null)
    await teardownChildNet({ ...netFor(shortId(res.id), res.net_index), netns: res.netns });
  // A tap moved into the namespace went with it; one still in the host namespace is removed here.
  if (res.tap) await deleteLink(res.tap);
  if (res.cgroup) await removeCgroup(res.cgroup);
  if (res.volume_locks) releaseWriterLocks(res.volume_locks, res.work_dir);
  // The VMM's jail (uid lease, cgroup): freed when its QEMU exits, unless this process never saw it.
  const jail = readJailRecord(res.work_dir);
  if (jail) await releaseJail(jail);
  fs.rmSync(res.work_dir, { recursive: true, force: true });
}

/** A child started up to the point where only `cont` is left (device state loaded, paused). */
export interface PreparedChild {
  source: ChildSource;
  res: ChildResources;
  disk: string;
  pending: PendingRestore;
  /** Volumes the guest mounts once it runs. */
  mounts: VolumeMount[];
  /** A firmware guest's signal channel, connected ahead (it must be before `cont`). */
  signal?: SignalChannel;
}

/** The engine's VMM, through the backend-neutral interface (QEMU is the only backend). */
const vmm: Vmm<QemuVm> = new QemuVmm();

/** Step 1: dir, overlay, tap, QEMU with its device state loaded, paused. On failure everything taken is freed. */
export async function prepareChild(
  source: ChildSource,
  opts: { id: string; workDir: string; name?: string; volumes?: VolumeSpec[] | undefined },
): Promise<PreparedChild> {
  const res: ChildResources = {
    id: opts.id,
    work_dir: opts.workDir,
    tap: null,
    netns: null,
    net_index: null,
    cgroup: null,
  };
  fs.mkdirSync(res.work_dir, { recursive: true, mode: 0o700 });
  writeRecord(res);
  const disk = path.join(res.work_dir, 'disk.qcow2');
  try {
    fs.copyFileSync(source.overlayTemplate, disk);
    fs.chmodSync(disk, 0o600); // the template is read-only; the child writes its copy
    const locks: string[] = [];
    res.volume_locks = locks;
    const { drives, mounts } = await childVolumes(
      source.volumes,
      opts.volumes ?? [],
      res.work_dir,
      source.s.tag,
      locks,
    ).finally(() => writeRecord(res));
    if (source.machine.net === 'virtio') {
      res.tap = tapName(res.id);
      writeRecord(res);
      // A jailed QEMU makes its tap in its own network namespace (jail.ts); otherwise it is made here.
      if (!(await jailEnabled())) await createTap(res.tap);
    }
    const pending = await vmm.prestart({
      machine: source.machine,
      workDir: res.work_dir,
      memoryFile: source.memoryFile,
      vmstateFile: path.join(source.s.dir, source.s.meta.files.vmstate.path),
      disk,
      ...(drives.length ? { volumes: drives } : {}),
      name: opts.name ?? `forkd-${res.id}`,
      ...(res.tap ? { tap: res.tap } : {}),
    });
    if (!source.machine.firmware) return { source, res, disk, pending, mounts };
    try {
      return {
        source,
        res,
        disk,
        pending,
        mounts,
        signal: await SignalChannel.connect(pending.vm.paths.signalSocket),
      };
    } catch (e) {
      await pending.vm.destroy();
      throw e;
    }
  } catch (e) {
    await releaseChild(res);
    throw e;
  }
}

export interface StartOptions {
  /** Alone in its own network namespace (slot `netIndex`): needs a snapshot with a NIC. */
  netIndex?: number | undefined;
  /** Where the guest may connect out to (with `netIndex`); default: anywhere but the host. */
  egress?: EgressPolicy | undefined;
  memoryLimitMib?: number | null | undefined;
  /** The id the guest learns (hostname); defaults to the child id. */
  announceAs?: string | undefined;
  agentTimeoutMs?: number | undefined;
  /** performance.now() at which the caller's request started; ready_ms counts from it. */
  t0?: number | undefined;
  fromPool?: boolean;
}

/** A running child: its VM, its guest session, what it holds, and how it started. */
export class Child {
  private destroyed = false;
  constructor(
    readonly res: ChildResources,
    readonly vm: QemuVm,
    /** The agent and Python connections; undefined for a firmware guest (it has neither). */
    readonly guest: GuestSession | undefined,
    readonly identity: IdentityResult | undefined,
    readonly timings: ChildTimings | undefined,
    readonly disk: string,
  ) {}

  get id(): string {
    return this.res.id;
  }

  /** Stop the VM and free everything the child had. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.guest?.close();
    await this.vm.destroy();
    await releaseChild(this.res);
  }
}

/** Step 2: limits and network, cont, agent, identity. On failure the child is destroyed. */
export async function startChild(p: PreparedChild, opts: StartOptions = {}): Promise<Child> {
  const t0 = opts.t0 ?? performance.now();
  const { res, pending } = p;
  const vm = pending.vm;
  try {
    if (opts.memoryLimitMib) {
      res.cgroup = limitMemory(res.id, vm.pid, opts.memoryLimitMib);
      writeRecord(res);
    }
    if (opts.netIndex !== undefined) {
      if (!res.tap)
        throw new ForkdError(
          'bad_input',
          `snapshot '${p.source.s.tag}' has no network device, so per_child_netns cannot give its children a network`,
          'create the snapshot with a NIC (forkd snapshot --net, or "net": true in POST /v1/snapshots)',
        );
      const net = netFor(shortId(res.id), opts.netIndex);
      res.netns = net.netns;
      res.net_index = net.index;
      writeRecord(res);
      await setupChildNet(net, res.tap, (await jailEnabled()) ? vm.pid : undefined);
      // Before the guest runs: no packet leaves the namespace unjudged.
      await applyEgress(net.netns, res.tap, opts.egress ?? OPEN_POLICY, { dnsServer: net.hostAddr });
    }
    if (p.source.machine.firmware) return await startFirmwareChild(p, opts, t0);
    const { timings } = await vmm.completeRestore(pending);
    const tAgent0 = performance.now();
    // The first answer goes the shortest way through the guest: the Python worker's own port where
    // there is one (the agent is connected on first use), else the agent.
    const sockets = { agent: vm.agentSocket, python: pythonSocketOf(p.source, vm) };
    const timeoutMs = opts.agentTimeoutMs ?? 60_000;
    const first = sockets.python
      ? await PythonPort.connect(sockets.python, { timeoutMs })
      : await AgentClient.connect(vm.agentSocket, { timeoutMs });
    const tAgent = performance.now();
    let identity: IdentityResult;
    try {
      identity = await first.announce(opts.announceAs ?? res.id);
    } catch (e) {
      first.close();
      throw e;
    }
    const tId = performance.now();
    const session = new GuestSession(
      sockets,
      first instanceof PythonPort ? { python: first } : { agent: first },
    );
    try {
      for (const m of p.mounts) await (await session.agent()).mountVolume(m.serial, m.path, m.readonly);
    } catch (e) {
      session.close();
      throw new ForkdError(
        'agent_failed',
        `mounting the volumes of ${res.id}: ${(e as Error).message}`,
        'check the volume files are ext4 images (e2fsck -n FILE)',
      );
    }
    return new Child(
      res,
      vm,
      session,
      identity,
      childTimings(timings, opts, { agentMs: tAgent - tAgent0, identityMs: tId - tAgent, readyMs: tId - t0 }),
      p.disk,
    );
  } catch (e) {
    await vm.destroy();
    await releaseChild(res);
    throw e;
  }
}

/** The Python worker's socket when the snapshot's guest serves that port (Python was warm in it). */
function pythonSocketOf(source: ChildSource, vm: QemuVm): string | undefined {
  return source.machine.pythonPort && source.s.meta.guest.python ? vm.pythonSocket : undefined;
}

/**
 * A firmware guest (image/firmware.ts) has no agent: it is running once it sends its run signal on the
 * debug port. The signal socket is connected before `cont`, or the byte would be lost. `agent_ms`
 * holds the time from `cont` to the signal.
 */
async function startFirmwareChild(p: PreparedChild, opts: StartOptions, t0: number): Promise<Child> {
  const signal = p.signal ?? (await SignalChannel.connect(p.pending.vm.paths.signalSocket));
  try {
    const { timings } = await vmm.completeRestore(p.pending);
    const tCont = performance.now();
    await signal.waitFor(RUN_SIGNAL, 10_000);
    const tRun = performance.now();
    return new Child(
      p.res,
      p.pending.vm,
      undefined,
      undefined,
      childTimings(timings, opts, { agentMs: tRun - tCont, identityMs: 0, readyMs: tRun - t0 }),
      p.disk,
    );
  } finally {
    signal.close();
  }
}

/** A pool child did its spawn and load before the request: they are not on its path (0). */
function childTimings(
  t: RestoreTimings,
  opts: StartOptions,
  rest: { agentMs: number; identityMs: number; readyMs: number },
): ChildTimings {
  const r1 = (n: number) => Math.round(n * 10) / 10;
  return {
    spawn_ms: r1(opts.fromPool ? 0 : t.spawnMs),
    load_ms: r1(opts.fromPool ? 0 : t.loadMs),
    cont_ms: r1(t.contMs),
    agent_ms: r1(rest.agentMs),
    identity_ms: r1(rest.identityMs),
    ready_ms: r1(rest.readyMs),
    from_pool: opts.fromPool ?? false,
  };
}

/** Stop a prepared child that will not be started, freeing all it took. */
export async function discardPrepared(p: PreparedChild): Promise<void> {
  p.signal?.close();
  await p.pending.vm.destroy();
  await releaseChild(p.res);
}

/**
 * Take over a child whose QEMU outlived the process that started it (a daemon restart): QMP is
 * reconnected now, the agent on first use.
 */
export async function adoptChild(
  res: ChildResources,
  vmInfo: {
    pid: number;
    pidStart: number | undefined;
    memoryFile: string;
    activeDisk: string;
    /** The guest's Python worker serves its own port (the child was started with one). */
    pythonPort: boolean;
  },
): Promise<Child> {
  const paths = {
    ...workPaths(res.work_dir, vmInfo.memoryFile, vmInfo.activeDisk),
    tap: res.tap ?? undefined,
  };
  const vm = QemuVm.adopt(vmInfo.pid, vmInfo.pidStart, res.work_dir, paths);
  const qmp = await vm.connectQmp(5000);
  // The previous owner may have died between `stop` and `cont` (a branch or suspend in progress): such
  // a guest is paused for good unless resumed. A half-done outgoing migration is cancelled first.
  const st = await qmp.execute<{ status: string }>('query-status');
  if (st.status !== 'running') {
    const mig = await qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: undefined }));
    if (mig.status && !['completed', 'failed', 'cancelled', 'none'].includes(mig.status))
      await qmp.execute('migrate_cancel').catch(() => {});
    if (['paused', 'postmigrate', 'finish-migrate'].includes(st.status)) await qmp.execute('cont');
  }
  const guest = new GuestSession({
    agent: vm.agentSocket,
    python: vmInfo.pythonPort ? vm.pythonSocket : undefined,
  });
  return new Child(res, vm, guest, undefined, undefined, vmInfo.activeDisk);
}
