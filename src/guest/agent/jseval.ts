import fs from 'node:fs';
import { createRequire } from 'node:module';
import util from 'node:util';
import vm from 'node:vm';
import type { EvalResult } from '../../protocol/agent-api.js';

/**
 * Math.random for eval contexts, fed from the kernel RNG. V8's own generator state is copied into every
 * forked child and would repeat the parent's sequence; the kernel RNG is reseeded per child.
 */
function urandomSource(): { next: () => number; reset: () => void } {
  const pool = Buffer.alloc(4096);
  let off = pool.length;
  const reset = () => {
    off = pool.length;
  };
  const next = () => {
    if (off + 8 > pool.length) {
      const fd = fs.openSync('/dev/urandom', 'r');
      try {
        fs.readSync(fd, pool, 0, pool.length, null);
      } finally {
        fs.closeSync(fd);
      }
      off = 0;
    }
    // 53 random bits -> [0, 1)
    const hi = pool.readUInt32LE(off) >>> 5;
    const lo = pool.readUInt32LE(off + 4) >>> 6;
    off += 8;
    return (hi * 67108864 + lo) / 9007199254740992;
  };
  return { next, reset };
}

interface JsContext {
  ctx: vm.Context;
  out: string[];
  err: string[];
  chain: Promise<unknown>;
}

const contexts = new Map<string, JsContext>();
const random = urandomSource();

/** Drop the buffered random bytes after a restore: they were inherited from the parent. */
export function resetRandomPools(): void {
  random.reset();
}

function getContext(name: string): JsContext {
  let c = contexts.get(name);
  if (c) return c;
  const out: string[] = [];
  const err: string[] = [];
  const fmt = (args: unknown[]) => util.format(...args) + '\n';
  const sandbox = {
    console: {
      log: (...a: unknown[]) => out.push(fmt(a)),
      info: (...a: unknown[]) => out.push(fmt(a)),
      warn: (...a: unknown[]) => err.push(fmt(a)),
      error: (...a: unknown[]) => err.push(fmt(a)),
    },
    require: createRequire('/root/'),
    process,
    Buffer,
    setTimeout,
    clearTimeout,
    setInterval,
    clearInterval,
    URL,
    TextEncoder,
    TextDecoder,
    __forkdRandom: random.next,
  };
  const ctx = vm.createContext(sandbox);
  vm.runInContext('Math.random = __forkdRandom', ctx);
  c = { ctx, out, err, chain: Promise.resolve() };
  contexts.set(name, c);
  return c;
}

/** Evaluate JavaScript in a persistent named context (top-level let/const/var persist). */
export function evalJs(code: string, contextName: string, timeoutMs: number): Promise<EvalResult> {
  const c = getContext(contextName);
  const task = async (): Promise<EvalResult> => {
    c.out.length = 0;
    c.err.length = 0;
    const t0 = performance.now();
    try {
      let value = vm.runInContext(code, c.ctx, {
        filename: '<eval>',
        timeout: timeoutMs > 0 ? timeoutMs : undefined,
      }) as unknown;
      if (value && typeof (value as Promise<unknown>).then === 'function')
        value = await (value as Promise<unknown>);
      let resultJson: unknown;
      try {
        const s = JSON.stringify(value);
        if (s !== undefined) resultJson = JSON.parse(s);
      } catch {
        /* not JSON-serialisable */
      }
      return {
        ok: true,
        result: value === undefined ? null : util.inspect(value, { depth: 4 }),
        ...(resultJson !== undefined ? { result_json: resultJson } : {}),
        stdout: c.out.join(''),
        stderr: c.err.join(''),
        duration_ms: round(performance.now() - t0),
      };
    } catch (e) {
      const err = e as Error;
      return {
        ok: false,
        result: null,
        stdout: c.out.join(''),
        stderr: c.err.join(''),
        error: {
          type: err?.name ?? 'Error',
          message: err?.message ?? String(e),
          traceback: err?.stack ?? String(e),
        },
        duration_ms: round(performance.now() - t0),
      };
    }
  };
  const p = c.chain.then(task, task);
  c.chain = p.catch(() => undefined);
  return p;
}

const round = (v: number) => Math.round(v * 100) / 100;
