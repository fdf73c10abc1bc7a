import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { linkOrCopy } from '../util/fs.js';
import { run, runOk } from '../util/proc.js';
import { forkdVersion } from '../util/project.js';
import { createOverlay } from '../vmm/disk.js';
import { captureRunning, normalizeStream, type CaptureMode } from '../vmm/capture.js';
import type { QemuVm } from '../vmm/qemu.js';
import { createTap, deleteLink } from '../network/tap.js';
import { jailEnabled } from '../vmm/jail.js';
import { writeChildRecord } from '../host/records.js';
import { stageSnapshot } from './writer.js';
import { contentHash, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, type SnapshotMeta } from './metadata.js';
import { extractDiff, type DiffStats } from './memdiff.js';
import { fileEntry } from './create.js';
import { validateTag } from './tag.js';
import { machineOf, snapshotDir, type LoadedSnapshot } from './store.js';

export interface BranchSource {
  vm: QemuVm;
  sandboxId: string;
  /** The snapshot the sandbox was forked from. */
  source: LoadedSnapshot;
  /** The memory image the sandbox maps MAP_PRIVATE. */
  memoryFile: string;
  /** The sandbox's current disk overlay: frozen by the branch. */
  activeDisk: string;
  /** Where the sandbox continues writing after the branch. */
  nextDisk: string;
  /** Scratch dir for the stream and the normalizer (removed afterwards). */
  workDir: string;
  /** False when the source's RAM is a private mapping of a disk file (see CaptureSpec.background). */
  background?: boolean;
  /** The source's network, inherited by the snapshot's children (SnapshotMeta.network). */
  network?: SnapshotMeta['network'];
}

export interface BranchStarted {
  tag: string;
  dir: string;
  mode: CaptureMode;
  pauseMs: number;
  diff?: DiffStats;
  /** Resolves when the snapshot is complete and in place; rejects (and removes all traces) on failure. */
  done: Promise<SnapshotMeta>;
}

/**
 * Snapshot a running sandbox into a new tag. Returns once the source runs again; the snapshot is
 * finished in the background (`done`) and appears under its tag only when complete.
 */
export async function branchSandbox(
  src: BranchSource,
  tagIn: string,
  mode: CaptureMode,
): Promise<BranchStarted> {
  const tag = validateTag(tagIn);
  if (fs.existsSync(snapshotDir(tag)))
    throw new ForkdError(
      'exists',
      `snapshot '${tag}' already exists`,
      `pick another tag, or delete it first: forkd rmi ${tag}`,
    );
  const machine = machineOf(src.source);
  const staged = stageSnapshot(tag);
  const staging = staged.dir;
  fs.mkdirSync(src.workDir, { recursive: true });
  const stream = path.join(src.workDir, 'branch.stream');
  const memName = mode === 'diff' ? 'memory.diff' : 'memory.bin';
  let diff: DiffStats | undefined;
  const cleanup = () => {
    staged.abort();
    fs.rmSync(src.workDir, { recursive: true, force: true });
  };
  let pauseMs: number;
  let streamDone: Promise<{ streamMs: number }>;
  try {
    linkOrCopy(path.join(src.source.dir, src.source.meta.files.base.path), path.join(staging, 'base.ext4'));
    const cap = await captureRunning(src.vm, {
      mode,
      stream,
      newOverlay: src.nextDisk,
      ...(src.background === false ? { background: false } : {}),
      whileStopped:
        mode === 'diff'
          ? () => {
              diff = extractDiff(src.vm.pid, src.memoryFile, path.join(staging, memName));
            }
          : undefined,
    });
    pauseMs = cap.pauseMs;
    streamDone = cap.streamDone;
  } catch (e) {
    cleanup();
    throw e;
  }
  const done = (async () => {
    const t0 = performance.now();
    const { streamMs } = await streamDone;
    // The frozen layer: the overlay the source wrote until the pause, made independent of the source's
    // work dir. Full/live: rebased onto the raw base (self-contained). Diff: onto the parent's layer.
    const disk = path.join(staging, 'disk.qcow2');
    copyVmmFile(src.activeDisk, disk);
    const parentDisk = `../${src.source.tag}/${src.source.meta.files.disk.path}`;
    if (mode === 'diff') await rebase(staging, disk, parentDisk, 'qcow2');
    else await rebase(staging, disk, 'base.ext4', 'raw');
    const normDisk = path.join(src.workDir, 'normalize.qcow2');
    await createOverlay(normDisk, disk, 'qcow2');
    const memOut = mode === 'diff' ? path.join(src.workDir, 'scratch.mem') : path.join(staging, memName);
    const tap = machine.net === 'virtio' ? `fkn${randomBytes(4).toString('hex')}` : undefined;
    let norm: { loadMs: number; saveMs: number };
    try {
      if (tap) {
        // Recorded first, so a daemon killed mid-branch leaves a tap the sweeper can find and free.
        writeChildRecord({
          id: 'normalize',
          work_dir: src.workDir,
          tap,
          netns: null,
          net_index: null,
          cgroup: null,
        });
        if (!(await jailEnabled())) await createTap(tap);
      }
      norm = await normalizeStream({
        machine,
        workDir: path.join(src.workDir, 'normalize'),
        stream,
        memoryOut: memOut,
        vmstateOut: path.join(staging, 'vmstate'),
        disk: normDisk,
        ...(tap ? { tap } : {}),
      });
    } finally {
      if (tap) await deleteLink(tap);
    }
    fs.rmSync(stream, { force: true });
    // Zero pages come out allocated after a full load; punching them keeps the file sparse.
    if (mode !== 'diff') await run('fallocate', ['--dig-holes', memOut]);
    const memEntry = await fileEntry(staging, memName);
    const src0 = src.source.meta;
    const meta: SnapshotMeta = {
      format: SNAPSHOT_FORMAT,
      version: SNAPSHOT_VERSION,
      tag,
      created_at: new Date().toISOString(),
      forkd_version: forkdVersion(),
      vmm: src0.vmm,
      accelerator: src0.accelerator,
      accelerator_reason: src0.accelerator_reason,
      machine: src0.machine,
      guest: src0.guest,
      files: {
        vmstate: await fileEntry(staging, 'vmstate'),
        memory: {
          ...memEntry,
          allocated: fs.statSync(path.join(staging, memName)).blocks * 512,
          kind: mode === 'diff' ? 'diff' : 'full',
          logical_size: src0.machine.mem_mib * 1048576,
        },
        disk: {
          ...(await fileEntry(staging, 'disk.qcow2')),
          backing: mode === 'diff' ? parentDisk : 'base.ext4',
        },
        base: {
          ...src0.files.base,
          mtime_ms: Math.trunc(fs.statSync(path.join(staging, 'base.ext4')).mtimeMs),
        },
      },
      origin: {
        kind: 'branch',
        sandbox_id: src.sandboxId,
        source_tag: src.source.tag,
        mode,
        pause_ms: round(pauseMs),
      },
      lineage:
        mode === 'diff'
          ? {
              parent_tag: src.source.tag,
              parent_content_hash: contentHash(src0),
              depth: src0.lineage.depth + 1,
            }
          : { parent_tag: null, parent_content_hash: null, depth: 0 },
      timings: {
        pause_ms: round(pauseMs),
        stream_ms: round(streamMs),
        normalize_load_ms: round(norm.loadMs),
        normalize_save_ms: round(norm.saveMs),
        ...(diff
          ? {
              diff_pagemap_ms: round(diff.pagemapMs),
              diff_copy_ms: round(diff.copyMs),
              diff_pages: diff.pages,
            }
          : {}),
        total_ms: round(performance.now() - t0 + pauseMs),
      },
      ...(src.network ? { network: src.network } : {}),
    };
    staged.commit(meta);
    fs.rmSync(src.workDir, { recursive: true, force: true });
    return meta;
  })().catch((e: unknown) => {
    cleanup();
    throw e;
  });
  done.catch(() => {});
  return { tag, dir: snapshotDir(tag), mode, pauseMs: round(pauseMs), ...(diff ? { diff } : {}), done };
}

/** Re-parent a qcow2 layer, copying whatever differs between its old and new backing chains. */
async function rebase(cwd: string, image: string, backing: string, fmt: 'raw' | 'qcow2'): Promise<void> {
  await runOk('qemu-img', ['rebase', '-q', '-f', 'qcow2', '-b', backing, '-F', fmt, path.basename(image)], {
    cwd,
  });
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/**
 * Copy a file the sandbox's QEMU wrote (its overlay, in a dir its uid owns): opened without following
 * a symlink and only if it is a regular file, so a compromised VMM cannot make the daemon copy a host
 * file into a snapshot.
 */
function copyVmmFile(src: string, dst: string): void {
  const fd = fs.openSync(src, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    if (!fs.fstatSync(fd).isFile())
      throw new ForkdError('vmm_failed', `the sandbox's disk ${src} is not a regular file`);
    const out = fs.openSync(dst, 'w', 0o644);
    try {
      const buf = Buffer.allocUnsafe(4 << 20);
      for (let pos = 0; ;) {
        const n = fs.readSync(fd, buf, 0, buf.length, pos);
        if (n === 0) break;
        fs.writeSync(out, buf, 0, n);
        pos += n;
      }
    } finally {
      fs.closeSync(out);
    }
  } finally {
    fs.closeSync(fd);
  }
}
