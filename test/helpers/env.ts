import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Repository root (tests run from dist/test/...). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const FORKD = path.join(ROOT, 'bin', 'forkd');

/**
 * A private data dir and run dir per test file; the guest image cache (~/.cache/forkd) is shared, so the
 * Debian root filesystem is built once per machine and reused, keyed by its inputs.
 */
export function isolatedDirs(name: string): { data: string; run: string; cleanup: () => void } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `forkd-test-${name}-`));
  const data = path.join(base, 'data');
  const run = path.join(base, 'run');
  fs.mkdirSync(data);
  fs.mkdirSync(run);
  process.env.XDG_DATA_HOME = data;
  process.env.FORKD_RUN_DIR = run;
  return { data, run, cleanup: () => fs.rmSync(base, { recursive: true, force: true }) };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the real CLI as a user would. */
export function cli(
  args: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [FORKD, ...args], {
      env: { ...process.env, NO_COLOR: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`forkd ${args.join(' ')} timed out\n${stderr}`));
    }, opts.timeoutMs ?? 600_000);
    p.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** QEMU processes whose command line mentions `dir`. */
export function qemuProcessesUnder(dir: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes('qemu-system') && cmd.includes(dir)) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}
