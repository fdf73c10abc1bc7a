import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseInfoJit } from '../../src/vmm/qemu.js';
import { accelArgs, DEFAULT_TCG_CACHE_MIB, tcgCacheMib } from '../../src/vmm/qemu-argv.js';

// QEMU 7.2's `info jit`, as a restored child printed it.
const INFO_JIT = `Translation buffer state:
gen code size       24789763/67103744
TB count            42866
TB avg target size  18 max=1807 bytes
TB avg host size    336 bytes (expansion ratio: 17.8)
cross page TB count 144 (0%)
direct jump count   24199 (56%) (2 jumps=20545 47%)

Statistics:
TB flush count      1
TB invalidate count 0
TLB full flushes    0
[TCG profiler not compiled]
`;

describe('TCG code cache', () => {
  it("reads QEMU's info jit", () => {
    assert.deepEqual(parseInfoJit(INFO_JIT), { tbCount: 42866, codeBytes: 24789763, flushes: 1 });
  });

  it('is undefined for output that is not TCG statistics (KVM, an error text)', () => {
    assert.equal(parseInfoJit(''), undefined);
    assert.equal(parseInfoJit('JIT information is only available with accel=tcg\n'), undefined);
  });

  it('sizes the cache from FORKD_TCG_TB_MIB, and refuses nonsense naming the variable', () => {
    assert.equal(tcgCacheMib({}), DEFAULT_TCG_CACHE_MIB);
    assert.equal(tcgCacheMib({ FORKD_TCG_TB_MIB: '' }), DEFAULT_TCG_CACHE_MIB);
    assert.equal(tcgCacheMib({ FORKD_TCG_TB_MIB: '24' }), 24);
    for (const bad of ['0', '7', '2049', '16.5', 'lots', '-32'])
      assert.throws(() => tcgCacheMib({ FORKD_TCG_TB_MIB: bad }), /FORKD_TCG_TB_MIB must be a whole number/);
  });

  it('passes the size to TCG only', () => {
    assert.deepEqual(accelArgs('tcg'), ['-accel', `tcg,tb-size=${tcgCacheMib()}`, '-cpu', 'max']);
    assert.deepEqual(accelArgs('kvm'), ['-accel', 'kvm', '-cpu', 'host']);
  });
});
