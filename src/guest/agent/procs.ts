/**
 * The guest's table of long-lived processes (what E2B's envd `process.Process` service addresses by
 * pid): a process outlives the request that started it, any number of streams can attach to its
 * output and detach again, stdin stays open until closed, and signals go to its process group. A
 * process leaves the table when it exits. (`runExec` in exec.ts is the one-shot form: its process dies
 * with its request.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BASE_ENV } from './exec.js';
import { lookupUser } from './users.js';
import type { ProcEvent, ProcInfo, ProcStartRequest } from '../../protocol/agent-api.js';

/** Output waiting in one attached stream beyond which the process's output is paused (backpressure). */
const HIGH_WATER = 4 << 20;
/** Processes at once: a runaway loop of starts fails with a clear error instead of exhausting the guest. */
export const MAX_PROCS = 1024;

export interface Subscriber {
  send(ev: ProcEvent): void;
  /** Bytes queued in this subscriber and not yet sent; `onDrain` is called when it empties. */
  backlog(): number;
  onDrain(cb: () => void): void;
  end(): void;
}

interface Proc {
  info: ProcInfo;
  child: ChildProcess;
  subs: Set<Subscriber>;
  stdinOpen: boolean;
  /** A process on a terminal: its output is the terminal's, and fd 3 of the relay takes resizes. */
  pty: boolean;
}

/**
 * The PTY relay (ptyrelay.py): Node has no pseudo-terminals of its own. In the guest it sits next to
 * this file; host tests, which run the compiled file from dist/, name the source one.
 */
const ptyRelay = () =>
  process.env.FORKD_PTY_RELAY ?? fileURLToPath(new URL('./ptyrelay.py', import.meta.url));

export class ProcError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function validateProcStart(req: ProcStartRequest): string | undefined {
  if (!Array.isArray(req.argv) || req.argv.length === 0 || !req.argv.every((a) => typeof a === 'string'))
    return '"argv" must be a non-empty array of strings';
  if (req.env !== undefined) {
    if (typeof req.env !== 'object' || req.env === null || Array.isArray(req.env))
      return '"env" must be an object of strings';
    if (!Object.values(req.env).every((v) => typeof v === 'string')) return '"env" values must be strings';
  }
  if (req.cwd !== undefined && typeof req.cwd !== 'string') return '"cwd" must be a string';
  if (req.user !== undefined && typeof req.user !== 'string') return '"user" must be a string';
  if (req.tag !== undefined && typeof req.tag !== 'string') return '"tag" must be a string';
  if (req.pty !== undefined) {
    const ok = (n: unknown) => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 10_000;
    if (typeof req.pty !== 'object' || req.pty === null || !ok(req.pty.cols) || !ok(req.pty.rows))
      return '"pty" must be {cols, rows}, integers 1..10000';
  }
  return undefined;
}

export class ProcTable {
  private readonly procs = new Map<number, Proc>();

  list(): ProcInfo[] {
    return [...this.procs.values()].map((p) => p.info);
  }

  /** Start a process; `sub` is attached before its first byte of output. Resolves once it runs. */
  start(req: ProcStartRequest, sub: Subscriber): Promise<ProcInfo> {
    if (this.procs.size >= MAX_PROCS)
      return Promise.reject(new ProcError(429, `${MAX_PROCS} processes are running already`));
    if (req.tag !== undefined && [...this.procs.values()].some((p) => p.info.tag === req.tag))
      return Promise.reject(new ProcError(409, `a process with tag ${JSON.stringify(req.tag)} is running`));
    const user = lookupUser(req.user);
    if (!user) return Promise.reject(new ProcError(401, `no user ${JSON.stringify(req.user)} in this guest`));
    const cwd = req.cwd || user.home;
    if (!isDir(cwd))
      return Promise.reject(new ProcError(400, `cwd ${cwd} does not exist or is not a directory`));
    const env = {
      ...BASE_ENV,
      HOME: user.home,
      USER: user.name,
      LOGNAME: user.name,
      ...(req.env ?? {}),
    };
    return new Promise((resolve, reject) => {
      let child: ChildProcess;
      const pty = req.pty;
      try {
        child = pty
          ? spawn('python3', [ptyRelay(), String(pty.cols), String(pty.rows), ...req.argv], {
              cwd,
              env,
              uid: user.uid,
              gid: user.gid,
              detached: true,
              stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
            })
          : spawn(req.argv[0]!, req.argv.slice(1), {
              cwd,
              env,
              uid: user.uid,
              gid: user.gid,
              detached: true,
              stdio: [req.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
            });
      } catch (e) {
        reject(new ProcError(400, (e as Error).message));
        return;
      }
      child.once('error', (e: NodeJS.ErrnoException) => {
        if (child.pid !== undefined && this.procs.has(child.pid)) return; // after spawn: 'close' reports
        const what = pty ? 'python3 (a terminal needs the guest to have Python)' : req.argv[0];
        reject(new ProcError(400, e.code === 'ENOENT' ? `${what}: not found` : e.message));
      });
      child.once('spawn', () => {
        const info: ProcInfo = {
          pid: child.pid!,
          argv: req.argv,
          env: req.env ?? {},
          cwd,
          ...(req.tag !== undefined ? { tag: req.tag } : {}),
        };
        const proc: Proc = {
          info,
          child,
          subs: new Set([sub]),
          stdinOpen: Boolean(req.stdin) || Boolean(pty),
          pty: Boolean(pty),
        };
        (child.stdio[3] as NodeJS.WritableStream | null)?.on('error', () => {});
        this.procs.set(info.pid, proc);
        sub.send({ type: 'start', pid: info.pid });
        this.pipeOutput(proc);
        child.stdin?.on('error', () => {});
        child.once('close', (code, signal) => {
          this.procs.delete(info.pid);
          const end: ProcEvent = { type: 'end', exit_code: code, signal };
          for (const s of proc.subs) {
            s.send(end);
            s.end();
          }
          proc.subs.clear();
        });
        resolve(info);
      });
    });
  }

  /** Attach to a running process: `start` (same pid), then only output produced from now on. */
  attach(sel: Selector, sub: Subscriber): ProcInfo {
    const p = this.find(sel);
    p.subs.add(sub);
    sub.send({ type: 'start', pid: p.info.pid });
    return p.info;
  }

  detach(pid: number, sub: Subscriber): void {
    const p = this.procs.get(pid);
    if (!p) return;
    p.subs.delete(sub);
    this.resumeIfDrained(p); // a slow reader that left no longer holds the output back
  }

  input(sel: Selector, data: Buffer): void {
    const p = this.find(sel);
    if (!p.stdinOpen || !p.child.stdin || p.child.stdin.destroyed)
      throw new ProcError(400, `process ${p.info.pid} has no open stdin (start it with stdin: true)`);
    p.child.stdin.write(data);
  }

  /** A terminal's new window size (the program gets SIGWINCH). */
  resize(sel: Selector, cols: number, rows: number): void {
    const p = this.find(sel);
    const control = p.child.stdio[3] as NodeJS.WritableStream | null;
    if (!p.pty || !control) throw new ProcError(400, `process ${p.info.pid} has no terminal to resize`);
    control.write(`${cols} ${rows}\n`);
  }

  closeStdin(sel: Selector): void {
    const p = this.find(sel);
    p.stdinOpen = false;
    p.child.stdin?.end();
  }

  signal(sel: Selector, signal: NodeJS.Signals): void {
    const p = this.find(sel);
    try {
      process.kill(-p.info.pid, signal); // its group: the shell's children too
    } catch {
      try {
        p.child.kill(signal);
      } catch {
        /* gone meanwhile: its 'close' reports the end */
      }
    }
  }

  private find(sel: Selector): Proc {
    const p =
      sel.pid !== undefined
        ? this.procs.get(sel.pid)
        : [...this.procs.values()].find((x) => x.info.tag === sel.tag);
    if (!p)
      throw new ProcError(
        404,
        sel.pid !== undefined ? `process ${sel.pid} not found` : `process with tag ${sel.tag} not found`,
      );
    return p;
  }

  private pipeOutput(p: Proc): void {
    for (const which of ['stdout', 'stderr'] as const) {
      const r = p.child[which]!;
      r.on('data', (d: Buffer) => {
        const stream = p.pty ? 'pty' : which;
        const ev: ProcEvent = { type: 'data', stream, data: d.toString('base64') };
        for (const s of p.subs) s.send(ev);
        this.pauseIfBacklogged(p);
      });
    }
  }

  private pauseIfBacklogged(p: Proc): void {
    const slow = [...p.subs].find((s) => s.backlog() > HIGH_WATER);
    if (!slow) return;
    p.child.stdout?.pause();
    p.child.stderr?.pause();
    slow.onDrain(() => this.resumeIfDrained(p));
  }

  private resumeIfDrained(p: Proc): void {
    if ([...p.subs].some((s) => s.backlog() > HIGH_WATER)) return;
    p.child.stdout?.resume();
    p.child.stderr?.resume();
  }
}

export interface Selector {
  pid?: number;
  tag?: string;
}

export function parseSelector(body: Record<string, unknown>): Selector | string {
  if (typeof body.pid === 'number' && Number.isInteger(body.pid) && body.pid > 0) return { pid: body.pid };
  if (typeof body.tag === 'string' && body.tag) return { tag: body.tag };
  return 'give the process as "pid" (a positive integer) or "tag" (a string)';
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}
