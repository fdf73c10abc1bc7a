/**
 * The minimal firmware guest through the child engine (what npm run bench:kvm measures) and the
 * write-protect bench, on real VMs: KVM where /dev/kvm opens (a PVM host runs this guest), else TCG.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { cli, isolatedDirs, qemuProcessesUnder } from '../helpers/env.js';
import { createFirmwareSnapshot } from '../../src/snapshot/firmware.js';
import { loadSnapshot } from '../../src/snapshot/store.js';
import { resolveSource, startChild, type ChildSource } from '../../src/engine/child.js';
import { WarmPool, prepareSandbox } from '../../src/engine/pool.js';
import { wpBench } from '../../src/snapshot/wp-bench.js';
import { residentDir } from '../../src/snapshot/assemble.js';
import { silentReporter } from '../../src/util/report.js';
import { kvmOpenError } from '../../src/host/accel.js';

const ACCEL = kvmOpenError() === undefined ? 'kvm' : 'tcg';
let dirs: ReturnType<typeof isolatedDirs>;
let src: ChildSource;

describe(`firmware guest through the child engine [${ACCEL}]`, { timeout: 10 * 60_000 }, () => {
  before(async () => {
    dirs = isolatedDirs('fw');
    const meta = await createFirmwareSnapshot({ tag: 'fw', accel: ACCEL, memMib: 64 });
    assert.equal(meta.machine.firmware, 'firmware.bin');
    src = await resolveSource('fw', 'file');
  });
  after(() => dirs.cleanup());

  it('records a firmware snapshot with the usual files, hashed', () => {
    const s = loadSnapshot('fw');
    assert.equal(s.meta.accelerator, ACCEL);
    assert.equal(s.meta.guest.kernel_release, 'none (firmware guest)');
    assert.ok(s.meta.files.vmstate.size > 0);
    assert.equal(s.meta.files.memory.size, 64 << 20);
  });

  it('cold children run (each signals after restore) and leave nothing behind', async () => {
    const t0 = performance.now();
    const children = await Promise.all(
      [0, 1, 2].map(async () => startChild(await prepareSandbox(src), { t0 })),
    );
    for (const c of children) {
      assert.ok(c.vm.isAlive());
      assert.equal(c.guest, undefined, 'a firmware guest has no agent or Python');
      assert.ok(c.timings!.ready_ms > 0 && c.timings!.spawn_ms > 0, JSON.stringify(c.timings));
    }
    const dirsOf = children.map((c) => c.res.work_dir);
    await Promise.all(children.map((c) => c.destroy()));
    for (const d of dirsOf) {
      assert.ok(!fs.existsSync(d), `${d} removed`);
      assert.deepEqual(qemuProcessesUnder(d), []);
    }
  });

  it('children from the warm pool run too, with no process start on their path', async () => {
    const pool = new WarmPool({ perTag: 2, maxTotal: 2, log: () => {} }, async () => src);
    pool.refill('fw');
    const deadline = Date.now() + 60_000;
    while ((pool.sizes().fw ?? 0) < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const taken = [pool.take(src)!, pool.take(src)!];
    const children = await Promise.all(taken.map((p) => startChild(p, { fromPool: true })));
    await pool.close();
    for (const c of children) {
      assert.equal(c.timings!.from_pool, true);
      assert.equal(c.timings!.spawn_ms, 0);
    }
    await Promise.all(children.map((c) => c.destroy()));
  });

  it('wp-bench measures arming write protection and both copies, and cleans up', async () => {
    const before = fs.existsSync(residentDir()) ? fs.readdirSync(residentDir()) : [];
    const r = await wpBench({ regionMib: 32, reps: 1 }, silentReporter);
    assert.equal(r.region_mib, 32);
    assert.equal(r.runs.length, 2);
    assert.ok(r.live_arm_ms > 0 && r.live_copy_ms > 0 && r.full_pause_ms > 0, JSON.stringify(r));
    assert.ok(r.live_copy_mib_s > 0 && r.full_copy_mib_s > 0);
    assert.deepEqual(fs.readdirSync(residentDir()), before, 'its RAM file is gone');
    const bad = await cli(['wp-bench', '--region-mib', '3']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /--region-mib must be a whole number from 16/);
  });
});
