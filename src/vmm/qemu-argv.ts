import { ForkdError } from '../util/errors.js';
import type { MachineConfig } from './types.js';

/** The name of the virtio-serial port the guest agent listens on. */
export const AGENT_PORT_NAME = 'org.forkd.agent';
/** The port the warm Python interpreter serves itself (pyworker.py's HOST_PORT_NAME). */
export const PYTHON_PORT_NAME = 'org.forkd.python';

export interface QemuPaths {
  qmpSocket: string;
  agentSocket: string;
  pythonSocket: string;
  consoleLog: string;
  memoryFile: string;
  disk: string;
  /** Host tap interface name; required when the machine has a NIC. */
  tap?: string | undefined;
  /** Where a firmware guest's debug-port bytes come out (machine.firmware). */
  signalSocket: string;
  /** Volume drives after the root disk, as many as machine.volumes. */
  volumes?: VolumeDrive[] | undefined;
}

/** One volume's block device: the file this VMM opens for it. */
export interface VolumeDrive {
  file: string;
  format: 'raw' | 'qcow2';
  readOnly: boolean;
  /** What the guest reads as the device's serial (how the agent finds it). */
  serial: string;
}

/** The I/O port a firmware guest writes its signal bytes to (QEMU's isa-debugcon). */
export const SIGNAL_PORT = 0x402;

/** Every guest NIC has the same MAC and IP: each child is alone on its own tap / namespace. */
export const GUEST_MAC = 'aa:fc:00:00:00:01';
export const GUEST_IP = '10.42.0.2';
export const GUEST_GATEWAY = '10.42.0.1';
/**
 * And every gateway (the sandbox's tap) the same MAC: a child restored from a guest that had talked to
 * its gateway already holds that MAC in its ARP cache, and a tap with a new one would not get its
 * frames until the cache entry failed its probes (seconds of lost DNS and connects after every fork).
 */
export const GATEWAY_MAC = 'aa:fc:00:00:00:fe';

/** Flags every forkd QEMU gets: no default devices or config files, no display, exit on guest reboot. */
export const BASE_FLAGS = ['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'];

/**
 * TCG's translated-code cache per QEMU, MiB. Each child fills its own (no two QEMUs share
 * translations), so this caps the largest part of a TCG child's private memory; a cache too small for
 * what the guest runs is flushed and refilled, which costs time (npm run bench measures both).
 * FORKD_TCG_TB_MIB overrides the default; it is not part of the device state, so children may differ
 * from their parent.
 */
export function tcgCacheMib(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.FORKD_TCG_TB_MIB;
  if (raw === undefined || raw === '') return DEFAULT_TCG_CACHE_MIB;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 8 || n > 2048)
    throw new ForkdError(
      'bad_input',
      `FORKD_TCG_TB_MIB must be a whole number of MiB from 8 to 2048 (got '${raw}')`,
      `unset it for the default (${DEFAULT_TCG_CACHE_MIB}) or set e.g. FORKD_TCG_TB_MIB=32`,
    );
  return n;
}
export const DEFAULT_TCG_CACHE_MIB = 64;

/** The CPU model of KVM guests unless the machine names another (MachineConfig.cpu). */
export const KVM_CPU = 'host';

export function accelArgs(accel: MachineConfig['accel'], cpu?: string): string[] {
  return accel === 'kvm'
    ? ['-accel', 'kvm', '-cpu', cpu ?? KVM_CPU]
    : ['-accel', `tcg,tb-size=${tcgCacheMib()}`, '-cpu', 'max'];
}

/** Machine + device arguments. Must be identical for a parent and all of its children. */
export function machineArgs(m: MachineConfig, p: QemuPaths, share: boolean): string[] {
  const accel = accelArgs(m.accel, m.cpu);
  return [
    '-machine',
    'microvm,memory-backend=mem',
    ...accel,
    '-m',
    `${m.memMib}M`,
    '-smp',
    String(m.vcpus),
    '-object',
    `memory-backend-file,id=mem,size=${m.memMib}M,mem-path=${escapeOpt(p.memoryFile)},share=${share ? 'on' : 'off'}`,
    ...BASE_FLAGS,
    '-chardev',
    `file,id=con0,path=${escapeOpt(p.consoleLog)}`,
    '-serial',
    'chardev:con0',
    '-qmp',
    `unix:${escapeOpt(p.qmpSocket)},server=on,wait=off`,
    '-drive',
    `file=${escapeOpt(p.disk)},if=none,id=root,format=qcow2,discard=unmap`,
    '-device',
    'virtio-blk-device,drive=root',
    ...volumeArgs(m, p),
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${escapeOpt(p.agentSocket)},server=on,wait=off`,
    '-device',
    `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    ...pythonPortArgs(m, p),
    ...netArgs(m, p),
    ...firmwareArgs(m, p),
  ];
}

function volumeArgs(m: MachineConfig, p: QemuPaths): string[] {
  const drives = p.volumes ?? [];
  if (drives.length !== (m.volumes ?? 0))
    throw new Error(`the machine has ${m.volumes ?? 0} volume slots but ${drives.length} drives were given`);
  return drives.flatMap((d, i) => [
    '-drive',
    `file=${escapeOpt(d.file)},if=none,id=vol${i},format=${d.format},readonly=${d.readOnly ? 'on' : 'off'}`,
    '-device',
    `virtio-blk-device,drive=vol${i},serial=${d.serial}`,
  ]);
}

function pythonPortArgs(m: MachineConfig, p: QemuPaths): string[] {
  if (!m.pythonPort) return [];
  return [
    '-chardev',
    `socket,id=python,path=${escapeOpt(p.pythonSocket)},server=on,wait=off`,
    '-device',
    `virtserialport,chardev=python,name=${PYTHON_PORT_NAME}`,
  ];
}

function firmwareArgs(m: MachineConfig, p: QemuPaths): string[] {
  if (!m.firmware) return [];
  return [
    '-bios',
    m.firmware,
    '-chardev',
    `socket,id=signal,path=${escapeOpt(p.signalSocket)},server=on,wait=off`,
    '-device',
    `isa-debugcon,iobase=0x${SIGNAL_PORT.toString(16)},chardev=signal`,
  ];
}

function netArgs(m: MachineConfig, p: QemuPaths): string[] {
  if (m.net === 'none') return [];
  if (!p.tap) throw new Error('a machine with a NIC needs a tap interface');
  return [
    '-netdev',
    `tap,id=net0,ifname=${escapeOpt(p.tap)},script=no,downscript=no,vnet_hdr=on`,
    '-device',
    `virtio-net-device,netdev=net0,mac=${GUEST_MAC}`,
  ];
}

export function parentArgs(
  m: MachineConfig,
  p: QemuPaths,
  kernel: string,
  initrd: string,
  cmdline: string,
): string[] {
  if (m.firmware) return machineArgs(m, p, true);
  return [...machineArgs(m, p, true), '-kernel', kernel, '-initrd', initrd, '-append', cmdline];
}

/** A child waits for its device state (`-incoming defer`) and maps the parent's RAM file MAP_PRIVATE. */
export function childArgs(m: MachineConfig, p: QemuPaths): string[] {
  return [...machineArgs(m, p, false), '-incoming', 'defer'];
}

/** QEMU's option parser splits on ','; a literal comma in a value is written ',,'. */
export function escapeOpt(v: string): string {
  return v.replaceAll(',', ',,');
}

/** Quote a value for /bin/sh (QEMU runs `exec:` migration URIs through it). */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}
