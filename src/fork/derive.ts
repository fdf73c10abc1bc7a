import fs from 'node:fs';
import path from 'node:path';
import { ForkdError } from '../util/errors.js';
import type { Reporter } from '../util/report.js';
import { fork } from './fork.js';
import { memoryImage } from '../snapshot/assemble.js';
import { branchSandbox } from '../snapshot/branch.js';
import { vmDir } from '../vmm/jail.js';
import type { SnapshotMeta } from '../snapshot/metadata.js';
import { loadSnapshot, snapshotExists } from '../snapshot/store.js';
import { validateTag } from '../snapshot/tag.js';

export interface DeriveOptions {
  from: string;
  tag: string;
  /** Shell command run in the transient sandbox (must exit 0). */
  exec?: string;
  execTimeoutSecs?: number;
  /** Python run in its warm interpreter after the command: state every child of the new link inherits. */
  eval?: string;
}

export interface DeriveResult {
  meta: SnapshotMeta;
  dir: string;
  pauseMs: number;
  diffPages: number;
  diffPhysicalBytes: number;
  execMs: number;
  totalMs: number;
}

function tail(s: string, n = 1500): string {
  return s.length > n ? `…${s.slice(-n)}` : s;
}

/**
 * `snapshot-diff`: fork one transient sandbox from `from`, run the command (and eval) in it, and branch
 * it in diff mode into `tag`, a chain link holding only the memory pages and disk clusters that changed.
 * The sandbox is destroyed whatever happens.
 */
export async function deriveSnapshot(o: DeriveOptions, rep: Reporter): Promise<DeriveResult> {
  const t0 = performance.now();
  const from = validateTag(o.from);
  const tag = validateTag(o.tag);
  if (from === tag)
    throw new ForkdError('bad_input', '--tag must differ from --from', 'pick a new tag for the link');
  if (!o.exec?.trim() && !o.eval?.trim())
    throw new ForkdError(
      'bad_input',
      'nothing to record: pass --exec CMD and/or --eval CODE',
      'e.g. --exec "pip install pandas"',
    );
  const timeout = o.execTimeoutSecs ?? 600;
  if (!(timeout > 0 && timeout <= 86400))
    throw new ForkdError(
      'bad_input',
      `--exec-timeout-secs must be 1..86400 (got ${timeout})`,
      'e.g. --exec-timeout-secs 900',
    );
  const source = loadSnapshot(from);
  if (snapshotExists(tag))
    throw new ForkdError(
      'exists',
      `snapshot '${tag}' already exists`,
      `pick another tag, or delete it: forkd rmi ${tag}`,
    );
  const report = await fork({ tag: from, n: 1, keepRunning: true }, rep);
  const child = report.running?.[0];
  try {
    if (!child)
      throw new ForkdError(
        'vmm_failed',
        `the transient sandbox did not start: ${report.children[0]?.error ?? 'unknown error'}`,
      );
    const te = performance.now();
    if (o.exec?.trim()) {
      rep.step(`running in the transient sandbox: ${o.exec}`);
      const r = await (await child.guest.agent()).exec({ cmd: o.exec, timeout_ms: timeout * 1000 });
      if (r.timed_out)
        throw new ForkdError(
          'timeout',
          `--exec did not finish within ${timeout} s`,
          'raise --exec-timeout-secs',
        );
      if (r.exit_code !== 0)
        throw new ForkdError(
          'bad_input',
          `--exec exited with code ${r.exit_code}; no snapshot was made\n--- stdout\n${tail(r.stdout)}\n--- stderr\n${tail(r.stderr)}`,
          'fix the command (it runs under /bin/sh -c in the guest)',
        );
    }
    if (o.eval?.trim()) {
      const r = await child.guest.eval({ code: o.eval });
      if (!r.ok)
        throw new ForkdError(
          'bad_input',
          `--eval raised ${r.error?.type ?? 'an error'}: ${r.error?.message ?? ''}; no snapshot was made`,
          'fix the code (it runs in the warm Python interpreter)',
        );
    }
    const execMs = performance.now() - te;
    rep.step(`branching into '${tag}' (diff over '${from}')`);
    const c1 = path.join(report.work_dir, 'c1');
    const started = await branchSandbox(
      {
        vm: child.vm,
        sandboxId: child.report.id,
        source,
        memoryFile: await memoryImage(source),
        activeDisk: path.join(c1, 'disk.qcow2'),
        nextDisk: path.join(vmDir(c1), 'after-branch.qcow2'),
        workDir: path.join(report.work_dir, 'branch'),
        // The one-shot child maps the image from disk: stream while stopped (no userfaultfd needed).
        background: false,
      },
      tag,
      'diff',
    );
    const meta = await started.done;
    return {
      meta,
      dir: started.dir,
      pauseMs: started.pauseMs,
      diffPages: started.diff?.pages ?? 0,
      diffPhysicalBytes: meta.files.memory.allocated,
      execMs,
      totalMs: performance.now() - t0,
    };
  } finally {
    // Everything the transient child had: QEMU, its tap (a --net snapshot's), the work dir.
    await report.release?.();
    fs.rmSync(report.work_dir, { recursive: true, force: true });
  }
}
