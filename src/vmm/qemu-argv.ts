import type { MachineConfig } from './types.js';

/** The name of the virtio-serial port the guest agent listens on. */
export const AGENT_PORT_NAME = 'org.forkd.agent';

export interface QemuPaths {
  qmpSocket: string;
  agentSocket: string;
  consoleLog: string;
  memoryFile: string;
  disk: string;
  /** Host tap interface name; required when the machine has a NIC. */
  tap?: string | undefined;
}

/** Every guest NIC has the same MAC and IP: each child is alone on its own tap / namespace. */
export const GUEST_MAC = 'aa:fc:00:00:00:01';
export const GUEST_IP = '10.42.0.2';
export const GUEST_GATEWAY = '10.42.0.1';

/** Flags every forkd QEMU gets: no default devices or config files, no display, exit on guest reboot. */
export const BASE_FLAGS = ['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'];

export function accelArgs(accel: MachineConfig['accel']): string[] {
  return accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,tb-size=64', '-cpu', 'max'];
}

/** Machine + device arguments. Must be identical for a parent and all of its children. */
export function machineArgs(m: MachineConfig, p: QemuPaths, share: boolean): string[] {
  const accel = accelArgs(m.accel);
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
    '-device',
    'virtio-serial-device',
    '-chardev',
    `socket,id=agent,path=${escapeOpt(p.agentSocket)},server=on,wait=off`,
    '-device',
    `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    ...netArgs(m, p),
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
