import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BASE_ENV } from './exec.js';
import { python3Path } from './image-config.js';

interface Waiter {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
}

/**
 * The persistent warm Python interpreter. Started once at parent boot (so numpy is imported before the
 * snapshot), restarted if it dies. Requests are serialised: Python runs one eval at a time.
 */
export class PythonWorker {
  private proc: ChildProcess | undefined;
  private waiters = new Map<number, Waiter>();
  private nextId = 1;
  private buf = '';
  private chain: Promise<unknown> = Promise.resolve();
  info: { ready: boolean; version?: string; numpy?: string | null; error?: string } = { ready: false };
  private readyWaiters: Array<() => void> = [];
  /** This guest has no python3 at all: Python eval is refused at once, not after a wait. */
  absent = false;

  constructor(
    private readonly log: (msg: string) => void,
    /** The agent's port fd, handed to the worker so that it arms it for SIGIO (port.ts waitForHost). */
    private readonly agentPortFd: number | undefined,
    private readonly script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'pyworker.py'),
  ) {}

  start(): void {
    const python3 = python3Path();
    if (!python3) {
      this.absent = true;
      this.info = {
        ready: false,
        error:
          'python3 is not installed in this guest (Python eval needs an image with python3; JS eval works)',
      };
      return;
    }
    const proc = spawn(python3, ['-u', this.script], {
      stdio: [
        'ignore',
        'inherit',
        'inherit',
        'pipe',
        'pipe',
        ...(this.agentPortFd === undefined ? [] : [this.agentPortFd]),
      ],
      env: {
        ...BASE_ENV,
        PYTHONDONTWRITEBYTECODE: '1',
        ...(this.agentPortFd === undefined ? {} : { FORKD_AGENT_PORT_FD: '5' }),
      },
      cwd: '/root',
    });
    this.proc = proc;
    const out = proc.stdio[4] as NodeJS.ReadableStream;
    out.setEncoding('utf8');
    out.on('data', (d: string) => this.onData(d));
    proc.on('exit', (code, signal) => {
      this.log(`python worker exited (code ${code}, signal ${signal}); restarting`);
      this.info = { ready: false, error: 'python worker restarting' };
      for (const w of this.waiters.values())
        w.reject(new Error(`python worker died (code ${code}, signal ${signal})`));
      this.waiters.clear();
      this.proc = undefined;
      setTimeout(() => this.start(), 200);
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (msg.type === 'ready') {
        this.info = { ready: true, version: String(msg.python), numpy: (msg.numpy as string | null) ?? null };
        this.log(`python ${msg.python} ready (numpy ${msg.numpy ?? 'absent'})`);
        for (const r of this.readyWaiters.splice(0)) r();
        continue;
      }
      const w = this.waiters.get(Number(msg.id));
      if (w) {
        this.waiters.delete(Number(msg.id));
        w.resolve(msg);
      }
    }
  }

  whenReady(timeoutMs: number): Promise<boolean> {
    if (this.info.ready) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.readyWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Send one request; a timeout interrupts the running code with SIGINT (KeyboardInterrupt). */
  request(msg: Record<string, unknown>, timeoutMs = 0): Promise<Record<string, unknown>> {
    const task = async () => {
      if (this.absent) throw new Error(this.info.error);
      if (!(await this.whenReady(30_000)) || !this.proc?.stdio[3])
        throw new Error(this.info.error ?? 'python worker is not ready');
      const id = this.nextId++;
      const proc = this.proc;
      return new Promise<Record<string, unknown>>((resolve, reject) => {
        let timer: NodeJS.Timeout | undefined;
        let hardTimer: NodeJS.Timeout | undefined;
        if (timeoutMs > 0) {
          timer = setTimeout(() => {
            proc.kill('SIGINT');
            // Code that swallows KeyboardInterrupt or sits in C: kill the worker (state is lost).
            hardTimer = setTimeout(() => proc.kill('SIGKILL'), 5000);
          }, timeoutMs);
        }
        this.waiters.set(id, {
          resolve: (v) => {
            clearTimeout(timer);
            clearTimeout(hardTimer);
            resolve(v);
          },
          reject: (e) => {
            clearTimeout(timer);
            clearTimeout(hardTimer);
            reject(e);
          },
        });
        (proc.stdio[3] as NodeJS.WritableStream).write(JSON.stringify({ ...msg, id }) + '\n');
      });
    };
    const p = this.chain.then(task, task);
    this.chain = p.catch(() => undefined);
    return p;
  }
}
