import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { hostKind, validCachedProbe, type AccelProbe } from '../../src/host/accel.js';
import { MAX_TIMER_MS, measureHostSpeed, scaledMs, timeScaleFromEnv } from '../../src/util/host-speed.js';
import { ForkdError } from '../../src/util/errors.js';

const probe = (
  kvm: Partial<AccelProbe['kvm']>,
  accel: 'kvm' | 'tcg' = 'tcg',
  reason = 'probe',
): AccelProbe => ({
  accel,
  reason,
  kvm: { present: true, pvm: false, usable: null, detail: '/dev/kvm present', ...kvm },
  probed_at: new Date().toISOString(),
  key: 'k',
});
const BARE = 'flags\t\t: fpu svm sse\n';
const VM = 'flags\t\t: fpu svm hypervisor sse\n';

describe('host kinds (doctor)', () => {
  it('KVM that boots a stock guest kernel, on bare metal or nested', () => {
    const k = hostKind(probe({ usable: true }, 'kvm'), BARE);
    assert.equal(k.kind, 'kvm');
    assert.equal(k.detail, 'KVM runs stock guest kernels');
    assert.match(hostKind(probe({ usable: true }, 'kvm'), VM).detail, /itself a VM: nested KVM/);
  });
  it('KVM that cannot: PVM, or a nested KVM whose probe boot failed', () => {
    const pvm = hostKind(probe({ usable: false, pvm: true }), VM);
    assert.equal(pvm.kind, 'kvm-no-stock-guests');
    assert.match(pvm.detail, /PVM/);
    const nested = hostKind(probe({ usable: false }), VM);
    assert.equal(nested.kind, 'kvm-no-stock-guests');
    assert.match(nested.detail, /could not boot a stock guest kernel.*nested/);
  });
  it('no KVM: missing or not accessible', () => {
    assert.equal(hostKind(probe({ present: false, detail: '/dev/kvm missing' }), BARE).kind, 'no-kvm');
    assert.equal(hostKind(probe({ detail: '/dev/kvm not accessible: EACCES' }), BARE).kind, 'no-kvm');
  });
  it('says so when it has not probed yet (a forced accelerator proves nothing)', () => {
    const forced = hostKind(probe({}, 'kvm', 'forced by FORKD_ACCEL=kvm'), BARE);
    assert.equal(forced.kind, undefined);
    assert.match(forced.detail, /not yet probed/);
  });
  it("never takes another host's cached probe (a copied cache, or the host's cache seen from a VM)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-probe-cache-'));
    const old = process.env.XDG_CACHE_HOME;
    process.env.XDG_CACHE_HOME = dir;
    try {
      fs.mkdirSync(path.join(dir, 'forkd'));
      const write = (key: string) =>
        fs.writeFileSync(path.join(dir, 'forkd', 'accel-probe.json'), JSON.stringify({ ...probe({}), key }));
      write('some-other-kernel|7.2.22|6.1.192-3|true|true');
      assert.equal(await validCachedProbe('6.1.192-3'), undefined);
      assert.equal(await validCachedProbe(), undefined);
    } finally {
      if (old === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = old;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('host speed (timeouts follow it)', () => {
  it('measures a factor of at least 1 from a CPU workload', () => {
    const s = measureHostSpeed();
    assert.ok(s.factor >= 1 && s.factor <= 200, String(s.factor));
    assert.ok(s.workload_ms > 0);
  });
  it('never stretches a timeout past what setTimeout can hold (it would fire at once)', () => {
    assert.equal(scaledMs(24 * 3600_000 * 1000), MAX_TIMER_MS);
    assert.ok(scaledMs(1000) >= 1000);
  });
  it('takes FORKD_TIME_SCALE as given, and refuses nonsense with the fix', () => {
    assert.equal(timeScaleFromEnv(undefined), undefined);
    assert.equal(timeScaleFromEnv('')?.factor, undefined);
    assert.equal(timeScaleFromEnv('4')?.factor, 4);
    for (const bad of ['0', '-2', 'fast', '1e9'])
      assert.throws(
        () => timeScaleFromEnv(bad),
        (e: unknown) => e instanceof ForkdError && /FORKD_TIME_SCALE/.test(e.message),
      );
  });
});
