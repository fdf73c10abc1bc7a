import { spawn } from 'node:child_process';
import type { ExecEvent, ExecRequest } from '../../protocol/agent-api.js';
import { loadImageDefaults, shellPath } from './image-config.js';
import { lookupUser, type GuestUser } from './users.js';

/** An image guest's own defaults (its Env, WorkingDir, User); empty in recipe guests. */
export const IMAGE_DEFAULTS = loadImageDefaults();

export const BASE_ENV: Record<string, string> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/root',
  LANG: 'C.UTF-8',
  TERM: 'dumb',
  ...IMAGE_DEFAULTS.env,
};

/** The image's `User` (name, uid or uid:gid) as an account; root when unset or unknown. */
function imageUser(): GuestUser | undefined {
  const u = IMAGE_DEFAULTS.user;
  if (!u) return undefined;
  const [who, group] = u.split(':');
  if (/^\d+$/.test(who!)) {
    const uid = Number(who);
    return { name: who!, uid, gid: group && /^\d+$/.test(group) ? Number(group) : uid, home: '/' };
  }
  return lookupUser(who);
}
const RUN_AS = imageUser();

export function validateExec(req: ExecRequest): string | undefined {
  const hasArgv = Array.isArray(req.argv);
  const hasCmd = typeof req.cmd === 'string';
  if (hasArgv === hasCmd) return 'give exactly one of "argv" (array of strings) or "cmd" (shell string)';
  if (hasArgv && (req.argv!.length === 0 || !req.argv!.every((a) => typeof a === 'string')))
    return '"argv" must be a non-empty array of strings';
  if (hasCmd && req.cmd!.length === 0) return '"cmd" must not be empty';
  if (req.timeout_ms !== undefined && (!Number.isFinite(req.timeout_ms) || req.timeout_ms < 0))
    return '"timeout_ms" must be a number >= 0';
  if (req.env !== undefined && (typeof req.env !== 'object' || Array.isArray(req.env)))
    return '"env" must be an object of strings';
  return undefined;
}

/**
 * Run a command in its own process group, streaming output through `emit`. The timeout (and `abort`)
 * kill the whole group, so grandchildren of a shell die too.
 */
export function runExec(req: ExecRequest, emit: (ev: ExecEvent) => void, abort: AbortSignal): Promise<void> {
  const argv = req.argv ?? [shellPath(), '-c', req.cmd!];
  const cwd = req.cwd || IMAGE_DEFAULTS.working_dir || '/root';
  const t0 = performance.now();
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        cwd,
        env: {
          ...BASE_ENV,
          ...(RUN_AS && RUN_AS.uid !== 0 ? { HOME: RUN_AS.home } : {}),
          ...(req.env ?? {}),
        },
        ...(RUN_AS && RUN_AS.uid !== 0 ? { uid: RUN_AS.uid, gid: RUN_AS.gid } : {}),
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
    } catch (e) {
      emit({ type: 'error', error: (e as Error).message });
      resolve();
      return;
    }
    let timedOut = false;
    const killGroup = () => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* group already gone */
      }
    };
    const timer =
      req.timeout_ms && req.timeout_ms > 0
        ? setTimeout(() => {
            timedOut = true;
            killGroup();
          }, req.timeout_ms)
        : undefined;
    const onAbort = () => killGroup();
    abort.addEventListener('abort', onAbort, { once: true });
    child.on('spawn', () => emit({ type: 'start', pid: child.pid! }));
    child.stdout!.setEncoding('utf8').on('data', (d: string) => emit({ type: 'stdout', data: d }));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => emit({ type: 'stderr', data: d }));
    child.stdin!.on('error', () => {});
    child.stdin!.end(req.stdin ?? '');
    // A failed spawn emits 'error' and then 'close': report exactly one outcome.
    let settled = false;
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      if (timer) clearTimeout(timer);
      abort.removeEventListener('abort', onAbort);
      return true;
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (!settle()) return;
      const what = e.code === 'ENOENT' ? `${argv[0]}: not found (or cwd ${cwd} missing)` : e.message;
      emit({ type: 'error', error: what });
      resolve();
    });
    child.on('close', (code, signal) => {
      if (!settle()) return;
      emit({
        type: 'exit',
        exit_code: code,
        signal,
        timed_out: timedOut,
        duration_ms: Math.round((performance.now() - t0) * 10) / 10,
      });
      resolve();
    });
  });
}
