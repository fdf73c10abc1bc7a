import { describe, it, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isValidTag, validateTag } from '../../src/snapshot/tag.js';
import { SnapshotMeta, contentHash, type SnapshotMeta as Meta } from '../../src/snapshot/metadata.js';
import { checkIntegrity, listSnapshots, loadSnapshot, removeSnapshot } from '../../src/snapshot/store.js';
import { ForkdError } from '../../src/util/errors.js';

const hex = (c: string) => c.repeat(64);

export function sampleMeta(tag: string, files: Record<string, { size: number; mtime_ms: number }>): Meta {
  const f = (name: string, p: string) => ({
    path: p,
    size: files[name]!.size,
    sha256: hex('a'),
    mtime_ms: files[name]!.mtime_ms,
  });
  return {
    format: 'forkd-snapshot',
    version: 1,
    tag,
    created_at: new Date().toISOString(),
    forkd_version: '0.1.0',
    vmm: { kind: 'qemu', version: '7.2.22' },
    accelerator: 'tcg',
    accelerator_reason: 'test',
    machine: { accel: 'tcg', vcpus: 1, mem_mib: 512, net: 'none' },
    guest: {
      recipe: 'python-numpy',
      image_key: null,
      kernel_release: '6.1',
      python: '3.11',
      numpy: '1.24',
      node: 'v18',
      warmup: null,
      warmup_eval: null,
    },
    files: {
      vmstate: f('vmstate', 'vmstate'),
      memory: { ...f('memory', 'memory.bin'), allocated: 0, kind: 'full' },
      disk: { ...f('disk', 'disk.qcow2'), backing: 'base.ext4' },
      base: f('base', 'base.ext4'),
    },
    origin: { kind: 'boot', sandbox_id: null, source_tag: null, mode: null, pause_ms: null },
    lineage: { parent_tag: null, parent_content_hash: null, depth: 0 },
    timings: { pause_ms: 6 },
  };
}

describe('tags', () => {
  it('accepts the reference rule', () => {
    for (const t of ['py', 'py-numpy.v2', '_x', 'A'.repeat(64), '0', 'a_b-c.d']) assert.ok(isValidTag(t), t);
  });
  it('rejects everything else with a named error', () => {
    for (const t of ['', '.hidden', '-x', 'a/b', '../etc', 'a b', 'A'.repeat(65), 'ü', 'a\n']) {
      assert.ok(!isValidTag(t), JSON.stringify(t));
      assert.throws(
        () => validateTag(t),
        (e: unknown) => e instanceof ForkdError && e.code === 'bad_input',
      );
    }
  });
});

describe('snapshot store', () => {
  let root: string;
  const saved = process.env.XDG_DATA_HOME;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-store-'));
    process.env.XDG_DATA_HOME = root;
  });
  after(() => {
    process.env.XDG_DATA_HOME = saved;
    fs.rmSync(root, { recursive: true, force: true });
  });
  beforeEach(() => fs.rmSync(path.join(root, 'forkd'), { recursive: true, force: true }));

  function makeSnapshot(tag: string): string {
    const dir = path.join(root, 'forkd', 'snapshots', tag);
    fs.mkdirSync(dir, { recursive: true });
    const files: Record<string, { size: number; mtime_ms: number }> = {};
    for (const [name, p] of [
      ['vmstate', 'vmstate'],
      ['memory', 'memory.bin'],
      ['disk', 'disk.qcow2'],
      ['base', 'base.ext4'],
    ]) {
      fs.writeFileSync(path.join(dir, p!), `${name}-content`);
      files[name!] = {
        size: fs.statSync(path.join(dir, p!)).size,
        mtime_ms: Math.trunc(fs.statSync(path.join(dir, p!)).mtimeMs),
      };
    }
    fs.writeFileSync(path.join(dir, 'snapshot.json'), JSON.stringify(sampleMeta(tag, files)));
    return dir;
  }

  it('round-trips metadata through the schema and lists it', () => {
    makeSnapshot('one');
    const s = loadSnapshot('one');
    assert.equal(s.meta.machine.mem_mib, 512);
    assert.equal(SnapshotMeta.parse(s.meta).tag, 'one');
    assert.match(contentHash(s.meta), /^a{64}:/);
    const l = listSnapshots();
    assert.deepEqual(
      l.map((x) => x.tag),
      ['one'],
    );
  });

  it('names unknown tags, unreadable and future-format metadata', () => {
    assert.throws(
      () => loadSnapshot('missing'),
      (e: unknown) => e instanceof ForkdError && e.code === 'not_found' && /forkd images/.test(e.hint!),
    );
    const dir = makeSnapshot('bad');
    fs.writeFileSync(path.join(dir, 'snapshot.json'), '{not json');
    assert.throws(
      () => loadSnapshot('bad'),
      (e: unknown) => e instanceof ForkdError && e.code === 'corrupt_snapshot',
    );
    fs.writeFileSync(
      path.join(dir, 'snapshot.json'),
      JSON.stringify({ format: 'forkd-snapshot', version: 99 }),
    );
    assert.throws(
      () => loadSnapshot('bad'),
      (e: unknown) => e instanceof ForkdError && e.code === 'incompatible_snapshot',
    );
    const listed = listSnapshots().find((x) => x.tag === 'bad');
    assert.ok(listed?.error, 'broken snapshots are listed with their error, not hidden');
  });

  it('detects a memory file written after the snapshot', () => {
    const dir = makeSnapshot('mut');
    checkIntegrity(loadSnapshot('mut'));
    fs.appendFileSync(path.join(dir, 'memory.bin'), 'X');
    assert.throws(
      () => checkIntegrity(loadSnapshot('mut')),
      (e: unknown) =>
        e instanceof ForkdError &&
        e.code === 'corrupt_snapshot' &&
        /memory\.bin was modified/.test(e.message),
    );
  });

  it('removes atomically and refuses unknown tags', () => {
    makeSnapshot('gone');
    removeSnapshot('gone');
    assert.equal(fs.existsSync(path.join(root, 'forkd', 'snapshots', 'gone')), false);
    assert.deepEqual(fs.readdirSync(path.join(root, 'forkd', 'snapshots')), []);
    assert.throws(
      () => removeSnapshot('gone'),
      (e: unknown) => e instanceof ForkdError && e.code === 'not_found',
    );
  });
});
