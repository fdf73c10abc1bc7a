import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { childArgs, escapeOpt, machineArgs, parentArgs, shellQuote } from '../../src/vmm/qemu-argv.js';

const m = { accel: 'tcg' as const, vcpus: 1, memMib: 512, net: 'none' as const };
const p = {
  qmpSocket: '/w/qmp.sock',
  agentSocket: '/w/agent.sock',
  pythonSocket: '/w/python.sock',
  consoleLog: '/w/console.log',
  memoryFile: '/s/memory.bin',
  disk: '/w/disk.qcow2',
  signalSocket: '/w/signal.sock',
};

describe('QEMU argv', () => {
  it('gives parent and child the same machine and devices; only sharing of RAM differs', () => {
    const parent = parentArgs(m, p, '/k/vmlinux', '/k/initrd', 'console=ttyS0');
    const child = childArgs(m, p);
    const strip = (a: string[]) => a.map((x) => x.replace(/share=(on|off)/, 'share=?'));
    assert.deepEqual(strip(child.slice(0, -2)), strip(parent.slice(0, machineArgs(m, p, true).length)));
    assert.ok(parent.some((a) => a.includes('share=on')));
    assert.ok(child.some((a) => a.includes('share=off')));
    assert.deepEqual(child.slice(-2), ['-incoming', 'defer']);
    assert.ok(!child.includes('-kernel'));
  });
  it('uses KVM with the host CPU when the accelerator is kvm', () => {
    const a = machineArgs({ ...m, accel: 'kvm' }, p, false);
    assert.deepEqual(a.slice(a.indexOf('-accel'), a.indexOf('-accel') + 4), [
      '-accel',
      'kvm',
      '-cpu',
      'host',
    ]);
  });
  it('gives KVM guests the CPU model the machine records (a host quirk), else host', () => {
    const a = machineArgs({ ...m, accel: 'kvm', cpu: 'host,-arch-capabilities' }, p, false);
    assert.equal(a[a.indexOf('-cpu') + 1], 'host,-arch-capabilities');
  });
  it('boots a firmware guest from its -bios image, with the debug port on the signal socket', () => {
    const fw = { ...m, accel: 'kvm' as const, firmware: '/s/firmware.bin' };
    const parent = parentArgs(fw, p, '/k/vmlinux', '/k/initrd', 'console=ttyS0');
    assert.ok(!parent.includes('-kernel'), 'no kernel for a firmware guest');
    assert.equal(parent[parent.indexOf('-bios') + 1], '/s/firmware.bin');
    assert.ok(parent.includes('isa-debugcon,iobase=0x402,chardev=signal'));
    assert.ok(parent.some((a) => a.startsWith('socket,id=signal,path=/w/signal.sock,server=on')));
    const child = childArgs(fw, p);
    assert.equal(child[child.indexOf('-bios') + 1], '/s/firmware.bin', 'children run the same machine');
  });
  it("gives a machine with pythonPort the Python worker's own port, and none otherwise", () => {
    const withPort = machineArgs({ ...m, pythonPort: true }, p, true);
    assert.ok(withPort.includes('virtserialport,chardev=python,name=org.forkd.python'));
    assert.ok(withPort.some((a) => a.startsWith('socket,id=python,path=/w/python.sock,server=on')));
    assert.ok(!machineArgs(m, p, true).some((a) => a.includes('org.forkd.python')));
  });
  it('escapes commas in option values and quotes shell paths', () => {
    assert.equal(escapeOpt('/a,b/c'), '/a,,b/c');
    assert.ok(
      machineArgs(m, { ...p, memoryFile: '/x,y/mem' }, true).some((a) =>
        a.includes('mem-path=/x,,y/mem,share=on'),
      ),
    );
    assert.equal(shellQuote("/it's here"), `'/it'\\''s here'`);
  });
});
