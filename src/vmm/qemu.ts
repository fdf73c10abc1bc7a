import { openStreamSink } from './stream-sink.js';
import { scaledMs } from '../util/host-speed.js';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import { run, sameProcessAlive } from '../util/proc.js';
import { QmpClient } from './qmp.js';
import { childArgs, machineArgs, parentArgs, type QemuPaths } from './qemu-argv.js';
import {
  backingChain,
  bindLease,
  jailCommand,
  jailEnabled,
  leaseUid,
  readJailRecord,
  releaseJail,
  releaseLease,
  vmDir,
  writeJailRecord,
  type JailRecord,
} from './jail.js';
import type {
  BootSpec,
  PendingRestore as VmPendingRestore,
  RestoreSpec,
  RestoreTimings,
  SnapshotResult,
  Vmm,
  VmHandle,
} from './types.js';

export function qemuBinary(): string {
  return process.env.FORKD_QEMU || 'qemu-system-x86_64';
}

/**
 * What QEMU itself creates (sockets, console log) is in the work dir's `vm/` (jail.ts: the one dir a
 * jailed VMM may write); the daemon's own records stay beside it, out of the VMM's reach.
 */
export function workPaths(workDir: string, memoryFile: string, disk: string): QemuPaths {
  const own = vmDir(workDir);
  return {
    qmpSocket: path.join(own, 'qmp.sock'),
    agentSocket: path.join(own, 'agent.sock'),
    pythonSocket: path.join(own, 'python.sock'),
    consoleLog: path.join(own, 'console.log'),
    signalSocket: path.join(own, 'signal.sock'),
    memoryFile,
    disk,
  };
}

export interface TcgStats {
  /** Translation blocks in the code cache. */
  tbCount: number;
  /** Bytes of host code generated for them. */
  codeBytes: number;
  /** Times the cache filled up and was flushed (each flush means translating again). */
  flushes: number;
}

/** The numbers of QEMU's `info jit` (7.x text layout); undefined when it is not TCG's output. */
export function parseInfoJit(text: string): TcgStats | undefined {
  const num = (re: RegExp) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const codeBytes = num(/gen code size\s+(\d+)/);
  const tbCount = num(/TB count\s+(\d+)/);
  if (codeBytes === undefined || tbCount === undefined) return undefined;
  return { tbCount, codeBytes, flushes: num(/TB flush count\s+(\d+)/) ?? 0 };
}

/** One running QEMU process and its QMP connection: started by us, or adopted after a daemon restart. */
export class QemuVm implements VmHandle {
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private alive = true;
  qmp: QmpClient | undefined;
  /** The uid of a jailed QEMU (vmm/jail.ts); undefined when it runs unconfined. */
  jailUid: number | undefined;
  private stopWatch: (() => void) | undefined;

  private constructor(
    readonly pid: number,
    readonly workDir: string,
    readonly paths: QemuPaths,
    exited: (done: (r: { code: number | null; signal: NodeJS.Signals | null }) => void) => void,
  ) {
    this.exited = new Promise((resolve) => {
      exited((r) => {
        if (!this.alive) return;
        this.alive = false;
        this.qmp?.close();
        resolve(r);
      });
    });
  }

  static fromChild(child: ChildProcess, workDir: string, paths: QemuPaths): QemuVm {
    return new QemuVm(child.pid ?? -1, workDir, paths, (done) => {
      child.once('exit', (code, signal) => done({ code, signal }));
      child.once('error', () => done({ code: null, signal: null }));
    });
  }

  /**
   * Take over a QEMU this process did not start (a daemon restart). Its exit is noticed by polling the
   * pid together with its start time, so a recycled pid is not mistaken for the VM.
   */
  static adopt(pid: number, startTime: number | undefined, workDir: string, paths: QemuPaths): QemuVm {
    let timer: NodeJS.Timeout | undefined;
    const vm = new QemuVm(pid, workDir, paths, (done) => {
      timer = setInterval(() => {
        if (!sameProcessAlive({ pid, start: startTime })) {
          clearInterval(timer);
          done({ code: null, signal: null });
        }
      }, 500);
      timer.unref();
    });
    vm.stopWatch = () => clearInterval(timer);
    vm.jailUid = readJailRecord(workDir)?.uid;
    return vm;
  }

  get agentSocket(): string {
    return this.paths.agentSocket;
  }
  get pythonSocket(): string {
    return this.paths.pythonSocket;
  }
  get qmpSocket(): string {
    return this.paths.qmpSocket;
  }
  get consoleLog(): string {
    return this.paths.consoleLog;
  }
  isAlive(): boolean {
    return this.alive;
  }

  /**
   * Under TCG, how much guest code this QEMU has translated so far (QEMU's `info jit`): the guest work a
   * child repeats that its parent already did, since no two QEMUs share translations. Undefined under
   * KVM or when the monitor does not answer.
   */
  async tcgStats(): Promise<TcgStats | undefined> {
    if (!this.qmp) return undefined;
    let text: string;
    try {
      text = await this.qmp.execute<string>('human-monitor-command', { 'command-line': 'info jit' }, 5000);
    } catch {
      return undefined;
    }
    return parseInfoJit(text);
  }

  /** QEMU's own stderr (startup errors such as a bad option or a device-state mismatch). */
  qemuLog(): string {
    try {
      return fs.readFileSync(path.join(this.workDir, 'qemu.log'), 'utf8').trim();
    } catch {
      return '';
    }
  }

  async connectQmp(timeoutMs: number): Promise<QmpClient> {
    try {
      this.qmp = await QmpClient.connect(this.paths.qmpSocket, { timeoutMs, isAlive: () => this.alive });
    } catch (e) {
      if (!this.alive) {
        await this.exited;
        throw new ForkdError('vmm_failed', `QEMU exited during start-up: ${this.qemuLog() || 'no output'}`);
      }
      throw e;
    }
    return this.qmp;
  }

  /** Stop the vCPUs (the process stays, with its memory; it uses no CPU until resumed). */
  async pause(): Promise<void> {
    await this.requireQmp().execute('stop');
  }

  async resume(): Promise<void> {
    await this.requireQmp().execute('cont');
  }

  private requireQmp(): QmpClient {
    if (!this.qmp || this.qmp.isClosed)
      throw new ForkdError('vmm_failed', `QEMU ${this.pid}: no QMP connection (did it exit?)`);
    return this.qmp;
  }

  /** Forget the VM without stopping it (a daemon shutting down leaves sandboxes running). */
  release(): void {
    this.stopWatch?.();
    this.qmp?.close();
  }

  async destroy(opts: { graceful?: boolean } = {}): Promise<void> {
    if (!this.alive) return;
    if (opts.graceful && this.qmp && !this.qmp.isClosed) {
      try {
        await this.qmp.execute('quit', undefined, 1000);
      } catch {
        /* fall through to SIGKILL */
      }
      const quit = await Promise.race([this.exited.then(() => true), sleep(2000).then(() => false)]);
      if (quit) return;
    }
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await this.exited;
  }
}

/** A child QEMU that has been started and waits for its device state (`-incoming defer`). */
export type PendingRestore = VmPendingRestore<QemuVm>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cachedVersion: string | undefined;

/** The QEMU backend: microvm machine driven over QMP. */
export class QemuVmm implements Vmm<QemuVm> {
  readonly name = 'qemu';

  async version(): Promise<string> {
    if (cachedVersion) return cachedVersion;
    const r = await run(qemuBinary(), ['--version']);
    const m = /version\s+(\d+\.\d+\.\d+)/.exec(r.stdout);
    if (!m)
      throw new ForkdError(
        'host_unsupported',
        `cannot parse '${qemuBinary()} --version'`,
        'run: forkd doctor',
      );
    cachedVersion = m[1]!;
    return cachedVersion;
  }

  /**
   * Spawn QEMU, jailed where the host allows it (jail.ts). `files` says which files it opens: written
   * (its own, handed to its uid), shared (a snapshot's memory image), read (kernel, firmware); the disk
   * layers below `paths.disk` are found from the qcow2 headers.
   */
  private async start(
    workDir: string,
    paths: QemuPaths,
    argv: string[],
    opts: {
      extraFds?: number[];
      machine: RestoreSpec['machine'];
      writable: string[];
      shared?: string[];
      readable?: string[];
      confine?: boolean | undefined;
    },
  ): Promise<QemuVm> {
    fs.mkdirSync(vmDir(workDir), { recursive: true, mode: 0o700 });
    for (const s of [paths.qmpSocket, paths.agentSocket, paths.pythonSocket, paths.signalSocket])
      fs.rmSync(s, { force: true });
    let cmd = qemuBinary();
    let args = argv;
    let jail: JailRecord | undefined;
    if (opts.confine !== false && (await jailEnabled())) {
      const lease = leaseUid();
      try {
        const j = jailCommand(
          {
            lease,
            name: `vmm-${lease.uid}`,
            vmDir: vmDir(workDir),
            writable: [
              ...opts.writable,
              paths.disk,
              ...(paths.volumes ?? []).filter((v) => !v.readOnly).map((v) => v.file),
            ].filter((f, i, a) => a.indexOf(f) === i),
            shared: opts.shared ?? [],
            readable: [
              ...(opts.readable ?? []),
              ...(opts.machine.firmware ? [opts.machine.firmware] : []),
              ...backingChain(paths.disk),
              // Volumes: a read-only file, and the layers below a volume's own overlay.
              ...(paths.volumes ?? []).flatMap((v) => [
                ...(v.readOnly ? [v.file] : []),
                ...(v.format === 'qcow2' ? backingChain(v.file) : []),
              ]),
            ].filter((f) => f !== ''),
            kvm: opts.machine.accel === 'kvm',
            tap: paths.tap,
          },
          qemuBinary(),
          argv,
        );
        ({ cmd, args } = j);
        jail = j.record;
        writeJailRecord(workDir, jail);
      } catch (e) {
        releaseLease(lease);
        throw e;
      }
    }
    const log = fs.openSync(path.join(workDir, 'qemu.log'), 'w');
    const child = spawn(cmd, args, {
      stdio: ['ignore', log, log, ...(opts.extraFds ?? [])],
      // Own process group: a terminal's Ctrl-C reaches forkd, which tears children down in order.
      detached: true,
    });
    fs.closeSync(log);
    if (jail && child.pid) bindLease({ uid: jail.uid, file: jail.lease }, child.pid);
    fs.writeFileSync(path.join(workDir, 'qemu.pid'), `${child.pid}\n`);
    const vm = QemuVm.fromChild(child, workDir, paths);
    vm.jailUid = jail?.uid;
    if (jail) {
      const rec = jail;
      void vm.exited.then(() => releaseJail(rec).catch(() => {}));
    }
    return vm;
  }

  async boot(spec: BootSpec): Promise<QemuVm> {
    const paths = {
      ...workPaths(spec.workDir, spec.memoryFile, spec.disk),
      tap: spec.tap,
      volumes: spec.volumes,
    };
    const argv = [
      ...parentArgs(spec.machine, paths, spec.kernel, spec.initrd, spec.cmdline),
      '-name',
      'forkd-parent',
    ];
    const vm = await this.start(spec.workDir, paths, argv, {
      machine: spec.machine,
      writable: [spec.memoryFile],
      readable: [spec.kernel, spec.initrd],
      confine: spec.confine,
    });
    await vm.connectQmp(15_000);
    return vm;
  }

  async snapshot(vm: QemuVm, vmstateFile: string): Promise<SnapshotResult> {
    const qmp = vm.qmp!;
    const t0 = performance.now();
    await qmp.execute('stop');
    const tStop = performance.now();
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: true }],
    });
    const vmstateBytes = await migrateToFile(vm, vmstateFile, 120_000);
    const pauseMs = performance.now() - t0;
    return { pauseMs, stopMs: tStop - t0, vmstateBytes };
  }

  /**
   * Start a child QEMU that maps the snapshot's RAM and load its device state; it stays paused (the
   * saved state is a stopped VM). Split from `completeRestore` so a warm pool does all of this ahead of
   * time and a start is only `cont`. The guest sees no time pass while it waits: its clocks stand
   * still until `cont` (kvmclock and TCG's virtual clock alike), and the host sets its wall clock after.
   */
  async prestart(spec: RestoreSpec): Promise<PendingRestore> {
    const paths = {
      ...workPaths(spec.workDir, spec.memoryFile, spec.disk),
      tap: spec.tap,
      volumes: spec.volumes,
    };
    const argv = [...childArgs(spec.machine, paths), '-name', spec.name];
    const t0 = performance.now();
    // The device state travels as an inherited fd (fd 3): no shell, no copy.
    const stateFd = fs.openSync(spec.vmstateFile, 'r');
    let vm: QemuVm;
    try {
      vm = await this.start(spec.workDir, paths, argv, {
        extraFds: [stateFd],
        machine: spec.machine,
        writable: [],
        shared: [spec.memoryFile],
      });
    } finally {
      fs.closeSync(stateFd);
    }
    try {
      const qmp = await vm.connectQmp(30_000);
      // `events`: the end of the incoming migration arrives as a MIGRATION event (no polling).
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'x-ignore-shared', state: true },
          { capability: 'events', state: true },
        ],
      });
    } catch (e) {
      await vm.destroy();
      throw restoreError(e, vm);
    }
    const spawnMs = performance.now() - t0;
    try {
      const qmp = vm.qmp!;
      const tLoad0 = performance.now();
      const ended = qmp.waitEvent('MIGRATION', 60_000, (ev) =>
        ['completed', 'failed', 'cancelled'].includes(String(ev.data?.status)),
      );
      ended.catch(() => {}); // awaited below; a failed migrate-incoming must not leave it unhandled
      await qmp.execute('migrate-incoming', { uri: 'fd:3' });
      const ev = await ended;
      if (ev.data?.status !== 'completed') await waitMigration(qmp, 1000, () => vm.qemuLog()); // names the error
      return { vm, spawnMs, loadMs: performance.now() - tLoad0 };
    } catch (e) {
      await vm.destroy();
      throw restoreError(e, vm);
    }
  }

  /** Let a prestarted (loaded, paused) child run. */
  async completeRestore(p: PendingRestore): Promise<{ vm: QemuVm; timings: RestoreTimings }> {
    const { vm } = p;
    try {
      const t0 = performance.now();
      await vm.qmp!.execute('cont');
      const contMs = performance.now() - t0;
      return { vm, timings: { spawnMs: p.spawnMs, loadMs: p.loadMs, contMs } };
    } catch (e) {
      await vm.destroy();
      throw restoreError(e, vm);
    }
  }

  async restore(spec: RestoreSpec): Promise<{ vm: QemuVm; timings: RestoreTimings }> {
    return this.completeRestore(await this.prestart(spec));
  }

  /** Start a QEMU for offline work on a snapshot (normalizing a branch stream): paused, waiting. */
  async startIncoming(
    machine: RestoreSpec['machine'],
    workDir: string,
    memoryFile: string,
    disk: string,
    /** The incoming stream, handed to QEMU as fd 3 (migrate-incoming fd:3): no shell, no path. */
    stream: string,
    tap?: string,
  ): Promise<QemuVm> {
    if (machine.volumes)
      throw new ForkdError(
        'bad_input',
        'a snapshot with volumes cannot be branched or compacted',
        'make a snapshot without volumes for that, and attach the volumes to its sandboxes',
      );
    const paths = { ...workPaths(workDir, memoryFile, disk), tap };
    const argv = [
      ...machineArgs(machine, paths, true),
      '-incoming',
      'defer',
      '-S',
      '-name',
      'forkd-normalize',
    ];
    const streamFd = fs.openSync(stream, 'r');
    let vm: QemuVm;
    try {
      vm = await this.start(workDir, paths, argv, { extraFds: [streamFd], machine, writable: [memoryFile] });
    } finally {
      fs.closeSync(streamFd);
    }
    await vm.connectQmp(30_000);
    return vm;
  }
}

function restoreError(e: unknown, vm: QemuVm): ForkdError {
  if (e instanceof ForkdError) return e;
  const log = vm.qemuLog();
  return new ForkdError(
    'vmm_failed',
    `restore failed: ${(e as Error).message}${log ? `\nQEMU said: ${log}` : ''}`,
  );
}

/** Poll query-migrate until the migration (either direction) completes. */
/**
 * Run an outgoing migration into `file` (with the capabilities already set) and resolve with its size
 * once the file is complete. Outgoing `fd:` needs SCM_RIGHTS (getfd), which Node sockets cannot send,
 * so the stream goes through an `exec:` writer into the stream sink.
 */
export async function migrateToFile(vm: QemuVm, file: string, timeoutMs: number): Promise<number> {
  const sink = await openStreamSink(vm.workDir, file);
  try {
    await vm.qmp!.execute('migrate', { uri: sink.uri });
    await waitMigration(vm.qmp!, timeoutMs);
  } catch (e) {
    sink.close();
    throw e;
  }
  return sink.written;
}

/**
 * After an outgoing migration reports `completed`, QEMU's migration thread still has to leave the
 * `finish-migrate` run state (it takes the big lock to do so); a `cont` in between fails with
 * "Migration is not finalized yet". Seen on a loaded host: wait until the run state has moved on.
 */
async function waitRunstateSettled(qmp: QmpClient, deadline: number): Promise<void> {
  for (;;) {
    const { status } = await qmp.execute<{ status: string }>('query-status');
    if (status !== 'finish-migrate') return;
    if (Date.now() > deadline)
      throw new ForkdError('timeout', 'QEMU stayed in finish-migrate after its migration completed');
    await sleep(5);
  }
}

export async function waitMigration(
  qmp: QmpClient,
  refTimeoutMs: number,
  diag?: () => string,
): Promise<void> {
  const timeoutMs = scaledMs(refTimeoutMs);
  const deadline = Date.now() + timeoutMs;
  let delay = 0.5;
  for (;;) {
    const st = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'completed') return waitRunstateSettled(qmp, deadline);
    if (st.status === 'failed' || st.status === 'cancelled') {
      const extra = diag?.() ?? '';
      throw new ForkdError(
        'vmm_failed',
        `migration ${st.status}${st['error-desc'] ? `: ${st['error-desc']}` : ''}${extra ? `\n${extra}` : ''}`,
      );
    }
    if (Date.now() > deadline)
      throw new ForkdError('timeout', `migration did not complete in ${timeoutMs} ms`);
    await sleep(delay);
    delay = Math.min(delay * 2, 20);
  }
}
