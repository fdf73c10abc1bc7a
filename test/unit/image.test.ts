import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { moduleLoadOrder } from '../../src/image/kernel.js';
import { agentFiles } from '../../src/image/agent-files.js';
import { getRecipe, withExtras } from '../../src/image/recipes.js';
import { rootfsKey } from '../../src/image/rootfs.js';
import { ForkdError } from '../../src/util/errors.js';

const DEP = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`;

describe('guest kernel modules', () => {
  it('orders every module after its dependencies, each once', () => {
    const order = moduleLoadOrder(DEP, ['virtio_mmio', 'virtio_blk', 'ext4']).map((p) =>
      path.basename(p, '.ko'),
    );
    assert.equal(new Set(order).size, order.length);
    const at = (m: string) => order.indexOf(m);
    assert.ok(
      at('virtio_ring') < at('virtio') && at('virtio') < at('virtio_mmio') && at('virtio') < at('virtio_blk'),
    );
    assert.ok(at('crc16') < at('ext4') && at('jbd2') < at('ext4') && at('mbcache') < at('ext4'));
  });
  it('names a module the kernel lacks and detects cycles', () => {
    assert.throws(() => moduleLoadOrder(DEP, ['vhost_vsock']), /vhost_vsock is not in this kernel/);
    assert.throws(() => moduleLoadOrder('a.ko: b.ko\nb.ko: a.ko\n', ['a']), /cycle/);
  });
});

describe('guest agent bundle', () => {
  it('imports only Node built-ins and its own modules (the guest has no node_modules)', () => {
    for (const f of agentFiles().filter((x) => x.src.endsWith('.js'))) {
      const src = fs.readFileSync(f.src, 'utf8');
      for (const m of src.matchAll(/^import[^'"]*['"]([^'"]+)['"]/gm)) {
        const spec = m[1]!;
        assert.ok(
          spec.startsWith('node:') || spec.startsWith('./') || spec.startsWith('../'),
          `${f.dest} imports ${spec}`,
        );
      }
    }
  });
  it('ships the python worker and the guest init', () => {
    const dests = agentFiles().map((f) => f.dest);
    assert.ok(dests.includes('src/guest/agent/pyworker.py'));
    assert.ok(dests.includes('init'));
    assert.ok(dests.includes('src/guest/agent/main.js'));
  });
});

describe('recipes', () => {
  it('keys the root filesystem by its inputs', () => {
    const r = getRecipe('python-numpy');
    const k1 = rootfsKey(r, 2048, 'http://m/debian');
    assert.equal(
      k1,
      rootfsKey({ ...r, packages: [...r.packages].reverse() }, 2048, 'http://m/debian'),
      'package order does not matter',
    );
    assert.notEqual(k1, rootfsKey(withExtras(r, ['git']), 2048, 'http://m/debian'));
    assert.notEqual(k1, rootfsKey(r, 4096, 'http://m/debian'));
  });
  it('rejects unknown recipes and bad package names', () => {
    assert.throws(
      () => getRecipe('nope'),
      (e: unknown) => e instanceof ForkdError && /python-numpy/.test(e.hint!),
    );
    assert.throws(
      () => withExtras(getRecipe('base'), ['rm -rf /']),
      (e: unknown) => e instanceof ForkdError && e.code === 'bad_input',
    );
  });
});
