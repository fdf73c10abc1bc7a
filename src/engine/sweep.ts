import fs from 'node:fs';
import path from 'node:path';
import { runDir, snapshotsDir } from '../util/paths.js';
import { diskUsage, listDir } from '../util/fs.js';
import { pidAlive } from '../util/proc.js';
import { ownerAlive, readOwner, WORK_PREFIXES } from '../host/workdir.js';
import { readChildRecord, releaseChild, SANDBOX_DIR_PREFIX } from './child.js';

/**
 * The one sweeper for every kind of leftover: `forkd cleanup` and the daemon both use it. Each leftover
 * is freed through the record of whoever made it (owner.json for run dirs, child.json for each child,
 * which names its tap, network namespace and cgroup), never by guessing from names.
 */

export interface CleanupItem {
  path: string;
  kind: 'workdir' | 'sandbox' | 'staging' | 'deleting' | 'download' | 'process';
  action: 'DEL' | 'SKIP' | 'KILL';
  reason: string;
  bytes: number;
  pids: number[];
}

/** Processes whose command line mentions `dir` (QEMU children name their sockets and disks there). */
function processesUsing(dir: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(dir + '/')) out.push(Number(e));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/** Leftover QEMU processes of forkd whose work dir is gone entirely (e.g. removed by hand). */
function strayVmms(): Array<{ pid: number; dir: string }> {
  const out: Array<{ pid: number; dir: string }> = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0');
      const name = argv[argv.indexOf('-name') + 1];
      if (!argv[0]?.includes('qemu') || !name?.startsWith('forkd-')) continue;
      const qmp = argv.find((a) => a.startsWith('unix:') && a.includes('/qmp.sock'));
      const sock = qmp?.slice(5).split(',')[0];
      if (!sock) continue;
      let dir = path.dirname(sock);
      if (path.basename(dir).match(/^c\d+$/)) dir = path.dirname(dir);
      if (!fs.existsSync(dir)) out.push({ pid: Number(e), dir });
    } catch {
      /* exited */
    }
  }
  return out;
}

/**
 * Find what crashed runs left behind: work dirs whose owning forkd process is gone (with any QEMU still
 * running in them), staging dirs of snapshots that never completed, half-deleted snapshots. A dir whose
 * owner still runs is never touched. With `apply`, kill and remove; otherwise only report.
 */
export async function cleanup(apply: boolean): Promise<CleanupItem[]> {
  const items: CleanupItem[] = [];
  const consider = (dir: string, kind: CleanupItem['kind'], requireOwner: boolean) => {
    const owner = readOwner(dir);
    const pids = processesUsing(dir);
    const bytes = diskUsage(dir);
    if (ownerAlive(owner)) {
      items.push({
        path: dir,
        kind,
        action: 'SKIP',
        reason: `in use by forkd pid ${owner!.owner.pid}`,
        bytes,
        pids,
      });
    } else if (!owner && requireOwner && pids.length) {
      items.push({
        path: dir,
        kind,
        action: 'SKIP',
        reason: `no owner record but used by pid ${pids.join(',')}`,
        bytes,
        pids,
      });
    } else {
      const why = owner ? `owner pid ${owner.owner.pid} is gone` : 'no owner record';
      items.push({
        path: dir,
        kind,
        action: 'DEL',
        reason: pids.length ? `${why}; ${pids.length} leftover process(es)` : why,
        bytes,
        pids,
      });
    }
  };
  for (const e of listDir(runDir()))
    if (WORK_PREFIXES.some((p) => e.startsWith(p))) consider(path.join(runDir(), e), 'workdir', true);
    else if (e.startsWith(SANDBOX_DIR_PREFIX)) {
      // A daemon's sandbox outlives the daemon (it is re-adopted on restart): leftover only once its
      // QEMU is gone.
      const dir = path.join(runDir(), e);
      const pids = processesUsing(dir);
      items.push({
        path: dir,
        kind: 'sandbox',
        action: pids.length ? 'SKIP' : 'DEL',
        reason: pids.length
          ? `sandbox of forkd-controller, QEMU pid ${pids.join(',')} running (re-adopted when the daemon starts)`
          : 'sandbox whose QEMU is gone',
        bytes: diskUsage(dir),
        pids: [],
      });
    }
  try {
    for (const e of fs.readdirSync(snapshotsDir())) {
      if (e.startsWith('.staging-')) consider(path.join(snapshotsDir(), e), 'staging', true);
      else if (e.startsWith('.deleting-'))
        items.push({
          path: path.join(snapshotsDir(), e),
          kind: 'deleting',
          action: 'DEL',
          reason: 'interrupted rmi',
          bytes: diskUsage(path.join(snapshotsDir(), e)),
          pids: [],
        });
      else if (e.startsWith('.download-')) {
        // .download-<pid>-<ms>.tar.zst: a pull's pack file, kept only while that pull runs.
        const pid = Number(e.split('-')[1]);
        const live = pidAlive(pid);
        items.push({
          path: path.join(snapshotsDir(), e),
          kind: 'download',
          action: live ? 'SKIP' : 'DEL',
          reason: live ? `pull (pid ${pid}) still running` : 'interrupted pull',
          bytes: diskUsage(path.join(snapshotsDir(), e)),
          pids: [],
        });
      }
    }
  } catch {
    /* no snapshots yet */
  }
  for (const s of strayVmms())
    items.push({
      path: s.dir,
      kind: 'process',
      action: 'KILL',
      reason: `QEMU pid ${s.pid} whose work dir is gone`,
      bytes: 0,
      pids: [s.pid],
    });
  if (apply) {
    for (const it of items) {
      if (it.action === 'SKIP') continue;
      for (const pid of it.pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      if (it.pids.length) await waitGone(it.pids);
      if (it.kind === 'workdir' || it.kind === 'sandbox') await releaseChildrenIn(it.path);
      if (it.kind !== 'process') fs.rmSync(it.path, { recursive: true, force: true });
    }
  }
  return items;
}

async function waitGone(pids: number[]): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (
      pids.every((p) => {
        try {
          process.kill(p, 0);
          return false;
        } catch {
          return true;
        }
      })
    )
      return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Free the taps, namespaces and cgroups of every child recorded in `dir` (itself, or c1..cN below it). */
export async function releaseChildrenIn(dir: string): Promise<void> {
  const dirs = [dir];
  try {
    for (const e of fs.readdirSync(dir)) dirs.push(path.join(dir, e));
  } catch {
    return;
  }
  for (const d of dirs) {
    const rec = readChildRecord(d);
    if (rec) await releaseChild({ ...rec, work_dir: d });
  }
}

/**
 * The daemon's sweep after it re-adopted its sandboxes: every sandbox dir it does not `keep` is a
 * crash mid-spawn or an old pool child; its QEMU (if any) is killed and all it held is freed.
 * Returns the dirs removed.
 */
export async function sweepChildDirs(opts: { keep: Set<string>; apply: boolean }): Promise<string[]> {
  const removed: string[] = [];
  for (const n of listDir(runDir())) {
    const dir = path.join(runDir(), n);
    if (!n.startsWith(SANDBOX_DIR_PREFIX) || opts.keep.has(dir)) continue;
    removed.push(dir);
    if (!opts.apply) continue;
    await killProcessesUsing(dir);
    await releaseChildrenIn(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return removed;
}

/** Kill every process whose command line names `dir` (QEMUs of children started there). */
export async function killProcessesUsing(dir: string): Promise<void> {
  const pids = processesUsing(dir);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (pids.length) await waitGone(pids);
}
