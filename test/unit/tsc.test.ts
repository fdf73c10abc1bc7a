import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { pickTsc, tscCmdline } from '../../src/host/tsc.js';
import { bootCmdline } from '../../src/snapshot/boot.js';

const CPUINFO = (flags: string, mhz = '2700.000', bogo = '5400.00') =>
  `processor\t: 0\ncpu MHz\t\t: ${mhz}\nflags\t\t: fpu ${flags} sse\nbogomips\t: ${bogo}\n`;

describe('host TSC frequency', () => {
  it('prefers sysfs, then the refined calibration, then boot-time detection', () => {
    const log =
      '[0.000018] tsc: Detected 2700.000 MHz processor\n[1.2] tsc: Refined TSC clocksource calibration: 2699.987 MHz\n';
    assert.deepEqual(pickTsc({ sysfsKhz: '2712345\n', kernelLog: log }), {
      khz: 2712345,
      source: '/sys/devices/system/cpu/cpu0/tsc_freq_khz',
    });
    assert.equal(pickTsc({ kernelLog: log })?.khz, 2699987);
    assert.equal(pickTsc({ kernelLog: '[0.0] tsc: Detected 3193.999 MHz TSC\n' })?.khz, 3193999);
    assert.match(pickTsc({ kernelLog: log })!.source, /refined/);
  });

  it('falls back to /proc/cpuinfo only for an invariant TSC, and to bogomips when cpufreq varies cpu MHz', () => {
    assert.deepEqual(pickTsc({ cpuinfo: CPUINFO('constant_tsc nonstop_tsc') }), {
      khz: 2700000,
      source: '/proc/cpuinfo (cpu MHz, no cpufreq driver)',
    });
    assert.equal(
      pickTsc({ cpuinfo: CPUINFO('constant_tsc', '1200.000', '5999.99'), hasCpufreq: true })?.khz,
      2999995,
    );
    assert.equal(pickTsc({ cpuinfo: CPUINFO('tsc') }), undefined);
  });

  it('rejects implausible values instead of passing them to a guest', () => {
    assert.equal(pickTsc({ sysfsKhz: '0', kernelLog: 'tsc: Detected 0.001 MHz processor' }), undefined);
    assert.equal(pickTsc({ sysfsKhz: 'garbage' }), undefined);
    assert.deepEqual(tscCmdline(undefined), []);
    assert.deepEqual(tscCmdline({ khz: 2700000, source: 'x' }), ['tsc_early_khz=2700000']);
  });

  it('is put on every TCG boot command line, and on none under KVM', async () => {
    const prev = process.env.FORKD_TSC_KHZ;
    process.env.FORKD_TSC_KHZ = '2345678';
    try {
      const m = { accel: 'tcg' as const, vcpus: 1, memMib: 256, net: 'none' as const };
      const tcg = await bootCmdline({ machine: m, cmdline: 'console=ttyS0 quiet' });
      assert.equal(tcg.cmdline, 'console=ttyS0 quiet tsc_early_khz=2345678');
      const kvm = await bootCmdline({ machine: { ...m, accel: 'kvm' }, cmdline: 'console=ttyS0' });
      assert.equal(kvm.cmdline, 'console=ttyS0');
    } finally {
      if (prev === undefined) delete process.env.FORKD_TSC_KHZ;
      else process.env.FORKD_TSC_KHZ = prev;
    }
  });
});
