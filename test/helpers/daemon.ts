import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { ROOT } from './env.js';
import { scaledMs } from '../../src/util/host-speed.js';
import type { Controller } from '../../src/sdk/index.js';

export const CONTROLLER = path.join(ROOT, 'bin', 'forkd-controller');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export interface Daemon {
  url: string;
  proc: ChildProcess;
  log: () => string;
  stop: (signal?: NodeJS.Signals) => Promise<void>;
}

/** Start the real daemon (a separate process, so it can be kill -9'd) and wait until it answers. */
export async function startDaemon(opts: {
  port: number;
  stateDir: string;
  token?: string;
  args?: string[];
}): Promise<Daemon> {
  const args = [
    CONTROLLER,
    'serve',
    '--bind',
    `127.0.0.1:${opts.port}`,
    '--state',
    path.join(opts.stateDir, 'state.json'),
    '--audit-log',
    path.join(opts.stateDir, 'audit.log'),
    ...(opts.args ?? []),
  ];
  const proc = spawn(process.execPath, args, {
    env: { ...process.env, FORKD_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const url = `http://127.0.0.1:${opts.port}`;
  // A cap to report a daemon that never answers, not a speed target: loading its modules takes a
  // second here and many more inside the KVM suite's emulated outer VM.
  const deadline = Date.now() + scaledMs(120_000);
  for (;;) {
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) break;
    } catch {
      /* not yet */
    }
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`daemon did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    url,
    proc,
    log: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** Eval in a daemon sandbox; fails the test on a Python error. Returns the result's repr. */
export async function evalOk(c: Controller, id: string, code: string): Promise<string | null> {
  const r = await c.evalCode(id, code);
  assert.equal(r.error, null, `eval failed: ${r.traceback}`);
  return r.result;
}

/** Run a shell command in a daemon sandbox; fails the test unless it exits 0. Returns its stdout. */
export async function execOk(c: Controller, id: string, cmd: string): Promise<string> {
  const r = await c.execCommand(id, cmd);
  assert.equal(r.exit_code, 0, `${cmd}: ${r.stderr}`);
  return r.stdout;
}
