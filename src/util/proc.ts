import { spawn, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import { ForkdError } from './errors.js';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a program to completion, capturing output. Never uses a shell. */
export function run(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { input?: string | Buffer; onLine?: (line: string) => void } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const partial = { out: '', err: '' };
    const lines = (which: 'out' | 'err', d: string) => {
      if (!opts.onLine) return;
      partial[which] += d;
      const ls = partial[which].split('\n');
      partial[which] = ls.pop() ?? '';
      for (const l of ls) opts.onLine(l);
    };
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      lines('out', d);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      lines('err', d);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT')
        reject(new ForkdError('host_unsupported', `'${cmd}' is not installed`, 'run: forkd setup --yes'));
      else reject(e);
    });
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Like run() but throws with the program's stderr when it exits non-zero. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    const tail = (r.stderr || r.stdout).trim().split('\n').slice(-15).join('\n');
    // A host program failing is not a forkd bug: name the command and what it said.
    throw new ForkdError(
      'host_command',
      `${cmd} ${args.join(' ').slice(0, 300)} failed (exit ${r.code ?? r.signal}):\n${tail}`,
      `run: forkd doctor (it checks the host tools forkd needs); FORKD_DEBUG=1 shows more`,
    );
  }
  return r;
}

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Process start time in clock ticks since boot (field 22 of /proc/PID/stat); guards against pid reuse. */
export function pidStartTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[19]);
  } catch {
    return undefined;
  }
}

export function processIdentity(pid: number): { pid: number; start: number | undefined } {
  return { pid, start: pidStartTime(pid) };
}

/** True when the process with this pid is the same one that was recorded (same start time). */
export function sameProcessAlive(rec: { pid: number; start?: number | undefined }): boolean {
  if (!pidAlive(rec.pid)) return false;
  if (rec.start === undefined) return true;
  return pidStartTime(rec.pid) === rec.start;
}

export function commandExists(cmd: string): boolean {
  const dirs = (process.env.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(
    ':',
  );
  for (const extra of ['/usr/sbin', '/sbin']) if (!dirs.includes(extra)) dirs.push(extra);
  return dirs.some((d) => {
    try {
      fs.accessSync(`${d}/${cmd}`, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** MemAvailable from /proc/meminfo, in MiB (undefined where it cannot be read). */
export function memAvailableMib(): number | undefined {
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    return m ? Math.floor(Number(m[1]) / 1024) : undefined;
  } catch {
    return undefined;
  }
}
