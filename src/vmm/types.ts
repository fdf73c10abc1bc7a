import type { VolumeDrive } from './qemu-argv.js';
/**
 * The VMM boundary: everything the rest of forkd knows about a virtual machine monitor.
 * Only QEMU implements it today; another backend (Firecracker, cloud-hypervisor) would implement the same.
 */
export type Accel = 'kvm' | 'tcg';

/** The machine shape. Parent and children must be started with identical values (device state depends on it). */
export interface MachineConfig {
  accel: Accel;
  vcpus: number;
  memMib: number;
  /**
   * Guest network device. 'none' = no NIC; 'virtio' = one virtio-net NIC on a host tap (every child
   * gets its own tap, optionally alone in its own network namespace). Control always goes over the
   * virtio-serial agent port, so it works with no network at all.
   */
  net: NetMode;
  /**
   * A minimal firmware guest instead of a Linux kernel: this `-bios` image runs alone (no kernel, no
   * agent) and signals that it runs by writing to the debug port, which the host reads on the machine's
   * signal socket. Used to measure the runtime's own overhead where a Linux guest cannot run.
   */
  firmware?: string | undefined;
  /**
   * A second virtio-serial port, served by the guest's warm Python interpreter itself (pyworker.py):
   * identity and Python eval without the agent's HTTP/2 stack, the fast path of a fresh TCG child.
   * Part of the device set, so a snapshot's children have it exactly when the parent had it.
   */
  pythonPort?: boolean | undefined;
  /** KVM's `-cpu` model when not plain `host` (host/kvm-cpu.ts); part of what children must share. */
  cpu?: string | undefined;
  /** Volume block devices after the root disk (each VM chooses its own files for them). */
  volumes?: number | undefined;
}

export type NetMode = 'none' | 'virtio';

export interface BootSpec {
  machine: MachineConfig;
  workDir: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  /** Guest RAM file. The parent maps it shared so the saved file is the snapshot's memory. */
  memoryFile: string;
  /** Root disk (qcow2) the guest boots and writes on. */
  disk: string;
  volumes?: VolumeDrive[];
  /** Host tap interface for the NIC (machine.net === 'virtio'). */
  tap?: string;
  /** false: start this VMM unjailed (only for forkd's own measurement guests; see vmm/jail.ts). */
  confine?: boolean;
  /** Called with each console line while booting (progress, diagnostics). */
  onConsole?: (line: string) => void;
}

export interface RestoreSpec {
  machine: MachineConfig;
  workDir: string;
  memoryFile: string;
  vmstateFile: string;
  /** The child's private qcow2 overlay over the snapshot's frozen disk layer. */
  disk: string;
  volumes?: VolumeDrive[];
  name: string;
  /** Host tap interface for the NIC (machine.net === 'virtio'). */
  tap?: string;
}

export interface SnapshotResult {
  /** stop → migration completed; the window in which the guest was not running. */
  pauseMs: number;
  stopMs: number;
  vmstateBytes: number;
}

export interface RestoreTimings {
  /** exec of the VMM → control socket answered */
  spawnMs: number;
  /** device state loaded (migration completed) */
  loadMs: number;
  /** resume issued and acknowledged */
  contMs: number;
}

export interface VmHandle {
  readonly pid: number;
  readonly workDir: string;
  readonly agentSocket: string;
  /** The Python worker's own port (machine.pythonPort). */
  readonly pythonSocket: string;
  readonly qmpSocket: string;
  readonly consoleLog: string;
  /** Resolves when the VMM process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isAlive(): boolean;
  /** Stop the VM for good (graceful quit, then SIGKILL). Idempotent. */
  destroy(): Promise<void>;
}

/** A child VMM started with the snapshot's RAM mapped and its device state loaded, paused. */
export interface PendingRestore<H extends VmHandle = VmHandle> {
  vm: H;
  spawnMs: number;
  loadMs: number;
}

/**
 * What the engine and the snapshot code need from a VMM. `H` is the backend's handle type (QEMU's adds
 * its QMP connection, which branching uses).
 */
export interface Vmm<H extends VmHandle = VmHandle> {
  readonly name: string;
  version(): Promise<string>;
  boot(spec: BootSpec): Promise<H>;
  /** Pause the VM and save its device state; RAM stays in the memory file. The VM stays paused. */
  snapshot(vm: H, vmstateFile: string): Promise<SnapshotResult>;
  /**
   * Start a child up to the point where only `cont` is left: process, control socket, device state
   * loaded, paused (a warm pool does this ahead of time).
   */
  prestart(spec: RestoreSpec): Promise<PendingRestore<H>>;
  /** Let a prestarted child run. */
  completeRestore(p: PendingRestore<H>): Promise<{ vm: H; timings: RestoreTimings }>;
  restore(spec: RestoreSpec): Promise<{ vm: H; timings: RestoreTimings }>;
}
