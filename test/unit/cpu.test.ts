import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { hostCpu, missingCpuFeatures } from '../../src/host/cpu.js';

const CPUINFO =
  'processor\t: 0\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n' +
  'flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi1 bmi2 aes constant_tsc hypervisor rep_good lm\n' +
  'processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu sse\n';

describe('host CPU features (KVM snapshots)', () => {
  it('keeps the ISA features a guest can use, not Linux synthetic flags', () => {
    const c = hostCpu(CPUINFO);
    assert.equal(c.model, 'AMD EPYC 7B13 64-Core Processor');
    assert.deepEqual(c.flags, [
      'aes',
      'avx',
      'avx2',
      'bmi1',
      'bmi2',
      'fma',
      'lm',
      'sse',
      'sse2',
      'sse4_1',
      'sse4_2',
      'ssse3',
    ]);
    assert.ok(!c.flags.includes('constant_tsc') && !c.flags.includes('hypervisor'));
  });
  it('names what a restoring host lacks', () => {
    const saved = hostCpu(CPUINFO);
    const older = hostCpu(CPUINFO.replace(' avx2', '').replace(' fma', ''));
    assert.deepEqual(missingCpuFeatures(saved, older), ['avx2', 'fma']);
    assert.deepEqual(missingCpuFeatures(older, saved), [], 'a newer CPU runs an older snapshot');
  });
});
