import { ForkdError } from '../util/errors.js';

/** Results go to stdout (text or --json); progress and diagnostics to stderr. */
export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export function out(line = ''): void {
  process.stdout.write(line + '\n');
}

const EXIT: Record<string, number> = {
  bad_input: 2,
  not_found: 3,
  exists: 4,
  bad_pack: 5,
  untrusted: 6,
  interrupted: 130,
};

/** Report a failure (named problem + fix) and exit non-zero. */
export function fail(err: unknown, json: boolean): never {
  const e =
    err instanceof ForkdError
      ? err
      : new ForkdError(
          'internal',
          err instanceof Error ? err.message : String(err),
          'this is a bug in forkd; please report it with the command you ran',
        );
  if (json) printJson({ error: e.message, code: e.code, ...(e.hint ? { hint: e.hint } : {}) });
  process.stderr.write(`✗ ${e.message}\n${e.hint ? `  → ${e.hint}\n` : ''}`);
  if (e.code === 'internal' && process.env.FORKD_DEBUG && err instanceof Error)
    process.stderr.write(`${err.stack}\n`);
  process.exit(EXIT[e.code] ?? 1);
}

/** Parse an integer flag strictly ("10", not "10x" or "1e1"). */
export function intArg(name: string) {
  return (v: string): number => {
    if (!/^-?\d+$/.test(v.trim()))
      throw new ForkdError('bad_input', `${name} must be a whole number (got '${v}')`, `e.g. ${name} 10`);
    return Number(v);
  };
}

export function numArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n))
      throw new ForkdError('bad_input', `${name} must be a number (got '${v}')`, `e.g. ${name} 2`);
    return n;
  };
}
