import { z } from 'zod';
import { Controller, ControllerError, TimeoutError } from '../sdk/index.js';

/**
 * The MCP tools: each a JSON schema, a one-line description an LLM can act on, and a structured
 * result. Every tool goes through the daemon's REST API (the SDK's Controller), never to a VM.
 */
export interface ToolDef {
  name: string;
  description: string;
  input: z.ZodRawShape;
  run: (c: Controller, args: Record<string, unknown>) => Promise<Record<string, unknown>>;
}

/** What a tool hands back to a model: enough to act on, bounded so one call cannot flood a context. */
export const MAX_OUTPUT_CHARS = 64 * 1024;

function clip(text: string): { text: string; truncated: boolean } {
  return text.length > MAX_OUTPUT_CHARS
    ? {
        text: `${text.slice(0, MAX_OUTPUT_CHARS)}\n[... ${text.length - MAX_OUTPUT_CHARS} more characters cut]`,
        truncated: true,
      }
    : { text, truncated: false };
}

const id = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,128}$/)
  .describe('sandbox id (sb-...), from spawn or list_sandboxes');
const tag = z
  .string()
  .regex(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/)
  .describe('snapshot tag, from list_snapshots');
const absPath = z.string().startsWith('/').max(4096).describe('absolute path in the sandbox');
const timeoutSecs = (d: number) => z.number().int().min(1).max(3600).default(d);

const brief = (s: Record<string, unknown>) => ({
  id: s.id,
  snapshot_tag: s.snapshot_tag,
  status: s.status,
  network: s.network_summary,
  expires_at_unix: s.expires_at_unix,
});

async function runExec(c: Controller, sandboxId: string, command: string, secs: number, cwd?: string) {
  const r = await c.execCommand(sandboxId, command, { timeoutSecs: secs, ...(cwd ? { cwd } : {}) });
  const out = clip(r.stdout);
  const err = clip(r.stderr);
  return {
    exit_code: r.exit_code,
    stdout: out.text,
    stderr: err.text,
    timed_out: r.timed_out,
    ...(r.signal ? { signal: r.signal } : {}),
    ...(r.error ? { error: r.error } : {}),
    // The daemon's own cap, or ours: the model must know it did not see everything.
    truncated: Boolean(r.truncated) || out.truncated || err.truncated,
    duration_ms: r.duration_ms,
  };
}

/** Wait until `check` answers true, polling; false when the deadline passes. */
async function until(check: () => Promise<boolean>, secs: number): Promise<boolean> {
  const end = Date.now() + secs * 1000;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 250));
  }
}

export const TOOLS: ToolDef[] = [
  {
    name: 'list_snapshots',
    description: 'List the warm snapshots sandboxes can be spawned from (tag, size, status, recipe).',
    input: {},
    run: async (c) => ({
      snapshots: (await c.listSnapshots()).map((s) => {
        const x = s as unknown as Record<string, unknown>;
        return {
          tag: x.tag,
          status: x.status,
          recipe: x.recipe,
          created_at: x.created_at,
          parent_tag: x.parent_tag,
        };
      }),
    }),
  },
  {
    name: 'snapshot_info',
    description:
      'One snapshot in full: its lineage (diff chain), machine, guest, sizes and what depends on it.',
    input: { tag },
    run: async (c, a) => ({ snapshot: await c.snapshotInfo(a.tag as string) }),
  },
  {
    name: 'spawn',
    description:
      'Start n sandboxes (1-100) from a snapshot in milliseconds; each has its own memory and disk. Returns per-sandbox ids or errors.',
    input: {
      tag,
      n: z.number().int().min(1).max(100).default(1),
      netns: z
        .boolean()
        .optional()
        .describe('give each sandbox its own network namespace with internet egress'),
      memory_limit_mib: z.number().int().min(64).max(65536).optional(),
      timeout_secs: z
        .number()
        .int()
        .min(1)
        .max(86400)
        .optional()
        .describe('kill the sandbox after this long'),
    },
    run: async (c, a) => {
      const res = await c.spawnSandboxes({
        snapshotTag: a.tag as string,
        n: a.n as number,
        ...(a.netns !== undefined ? { perChildNetns: a.netns as boolean } : {}),
        ...(a.memory_limit_mib ? { memoryLimitMib: a.memory_limit_mib as number } : {}),
        ...(a.timeout_secs ? { timeout: a.timeout_secs as number } : {}),
      });
      return {
        sandboxes: res.map((r) =>
          r.ok ? { ok: true, id: r.id, ready_ms: r.timings?.ready_ms } : { ok: false, error: r.error },
        ),
      };
    },
  },
  {
    name: 'list_sandboxes',
    description: 'List running sandboxes (id, snapshot, status, network, expiry).',
    input: {},
    run: async (c) => ({
      sandboxes: (await c.listSandboxes()).map((s) => brief(s as unknown as Record<string, unknown>)),
    }),
  },
  {
    name: 'get_sandbox',
    description: 'One sandbox in full: status, snapshot, network policy, timeouts, branches.',
    input: { sandbox_id: id },
    run: async (c, a) => ({ sandbox: await c.getSandbox(a.sandbox_id as string) }),
  },
  {
    name: 'kill_sandbox',
    description:
      'Stop a sandbox and free everything it had. Idempotent: killed is false when it was already gone.',
    input: { sandbox_id: id },
    run: async (c, a) => {
      try {
        await c.killSandbox(a.sandbox_id as string);
        return { killed: true };
      } catch (e) {
        if (e instanceof ControllerError && e.status === 404) return { killed: false };
        throw e;
      }
    },
  },
  {
    name: 'exec',
    description:
      'Run a shell command (/bin/sh -c) in a sandbox; returns exit_code, stdout, stderr (truncated: true when cut).',
    input: {
      sandbox_id: id,
      command: z.string().min(1).max(100_000),
      cwd: absPath.optional(),
      timeout_secs: timeoutSecs(60),
    },
    run: (c, a) =>
      runExec(
        c,
        a.sandbox_id as string,
        a.command as string,
        a.timeout_secs as number,
        a.cwd as string | undefined,
      ),
  },
  {
    name: 'eval',
    description:
      "Evaluate code in the sandbox's warm interpreter (python default, or js); state persists between calls. Returns value, stdout, error and traceback.",
    input: {
      sandbox_id: id,
      code: z.string().min(1).max(1_000_000),
      language: z.enum(['python', 'js']).default('python'),
      timeout_secs: timeoutSecs(60),
    },
    run: async (c, a) => {
      const r = await c.evalCode(a.sandbox_id as string, a.code as string, {
        language: a.language as 'python' | 'js',
        timeoutSecs: a.timeout_secs as number,
      });
      return {
        ok: r.ok,
        value: r.result,
        stdout: clip(r.stdout).text,
        stderr: clip(r.stderr).text,
        ...(r.error ? { error: `${r.error_type ?? 'Error'}: ${r.error}`, traceback: r.traceback } : {}),
      };
    },
  },
  {
    name: 'read_file',
    description: 'Read a text file from a sandbox (truncated: true when cut).',
    input: { sandbox_id: id, path: absPath },
    run: async (c, a) => {
      const res = await c.readFile(a.sandbox_id as string, a.path as string);
      const t = clip(await res.text());
      return { path: a.path, content: t.text, truncated: t.truncated };
    },
  },
  {
    name: 'write_file',
    description: 'Write a text file in a sandbox (parent directories are created); returns its size.',
    input: { sandbox_id: id, path: absPath, content: z.string().max(16 * 1024 * 1024) },
    run: async (c, a) => {
      const e = await c.writeFile(a.sandbox_id as string, a.path as string, a.content as string);
      return { path: e.path, size: e.size };
    },
  },
  {
    name: 'list_dir',
    description: 'List a directory in a sandbox: name, type, size of each entry (depth 1-4).',
    input: { sandbox_id: id, path: absPath, depth: z.number().int().min(1).max(4).default(1) },
    run: async (c, a) => {
      const r = await c.listFiles(a.sandbox_id as string, a.path as string, a.depth as number);
      return { entries: r.entries.map((e) => ({ name: e.name, path: e.path, type: e.type, size: e.size })) };
    },
  },
  {
    name: 'branch',
    description:
      'Snapshot a running sandbox into a new tag (mode full|diff|live; live barely pauses it). Children spawned from the tag start from that instant.',
    input: {
      sandbox_id: id,
      tag: tag.optional(),
      mode: z.enum(['full', 'diff', 'live']).default('live'),
      wait: z.boolean().default(true).describe('false: return while the snapshot is still being written'),
    },
    run: async (c, a) => ({
      snapshot: await c.branchSandbox(a.sandbox_id as string, {
        ...(a.tag ? { tag: a.tag as string } : {}),
        mode: a.mode as 'full' | 'diff' | 'live',
        wait: a.wait as boolean,
      }),
    }),
  },
  {
    name: 'fork',
    description:
      'Start n copies of a running sandbox (branched live first) or of a snapshot tag: each child starts with the same memory and files. Per-child results.',
    input: {
      sandbox_id: id.optional().describe('fork this running sandbox (give this or tag)'),
      tag: tag.optional().describe('fork this snapshot (give this or sandbox_id)'),
      n: z.number().int().min(1).max(100).default(2),
    },
    run: async (c, a) => {
      if (Boolean(a.sandbox_id) === Boolean(a.tag))
        throw new ToolError(
          'give exactly one of sandbox_id or tag',
          'fork a running sandbox by id, or a snapshot by tag',
        );
      let from = a.tag as string | undefined;
      if (a.sandbox_id)
        from = (await c.branchSandbox(a.sandbox_id as string, { mode: 'live', wait: true })).tag;
      const res = await c.spawnSandboxes({ snapshotTag: from!, n: a.n as number });
      return {
        from_tag: from,
        children: res.map((r) => (r.ok ? { ok: true, id: r.id } : { ok: false, error: r.error })),
      };
    },
  },
  {
    name: 'wait_for_text',
    description:
      "Wait until a file in the sandbox contains a marker text, or until a command's output does (the command keeps running in the background until the marker or the timeout).",
    input: {
      sandbox_id: id,
      text: z.string().min(1).max(4096),
      path: absPath.optional().describe('watch this file (give this or command)'),
      command: z
        .string()
        .min(1)
        .max(100_000)
        .optional()
        .describe('run this and watch its output (give this or path)'),
      timeout_secs: timeoutSecs(30),
    },
    run: async (c, a) => {
      const sb = a.sandbox_id as string;
      const secs = a.timeout_secs as number;
      const t0 = Date.now();
      if (Boolean(a.path) === Boolean(a.command))
        throw new ToolError(
          'give exactly one of path or command',
          'path watches a file, command watches its output',
        );
      if (a.path) {
        // The path and marker travel as environment variables: never spliced into the shell text.
        const found = await until(async () => {
          const r = await c.execCommand(sb, 'grep -qF -- "$FORKD_MARK" "$FORKD_FILE"', {
            timeoutSecs: 10,
            env: { FORKD_MARK: a.text as string, FORKD_FILE: a.path as string },
          });
          return r.exit_code === 0;
        }, secs);
        return { found, waited_ms: Date.now() - t0 };
      }
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(), secs * 1000);
      let output = '';
      let exitCode: number | null | undefined;
      try {
        for await (const ev of c.execStream(sb, a.command as string, { signal: ac.signal })) {
          if (ev.type === 'stdout' || ev.type === 'stderr') output += ev.data;
          if (output.includes(a.text as string)) break;
          if (ev.type === 'exit') exitCode = ev.exit_code;
        }
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      } finally {
        clearTimeout(timer);
        ac.abort(); // ends the command's stream: the guest kills it if it still runs
      }
      const found = output.includes(a.text as string);
      return {
        found,
        waited_ms: Date.now() - t0,
        ...(exitCode !== undefined ? { exit_code: exitCode } : {}),
        output_tail: output.slice(-4000),
      };
    },
  },
];

/** A tool refused its arguments: told to the model as a tool error with the fix. */
export class ToolError extends Error {
  constructor(
    message: string,
    readonly hint: string,
  ) {
    super(message);
  }
}

/** Any failure as the text of an MCP tool error: what went wrong and what to do. */
export function toolErrorText(e: unknown): string {
  if (e instanceof ToolError) return `${e.message}\n→ ${e.hint}`;
  if (e instanceof ControllerError) return `${e.message}${e.hint ? `\n→ ${e.hint}` : ''}`;
  if (e instanceof TimeoutError) return `${e.message}\n→ retry with a longer timeout_secs`;
  const msg = (e as Error).message ?? String(e);
  if (/fetch failed|ECONNREFUSED/.test(msg))
    return `cannot reach the forkd daemon (${msg})\n→ start it: forkd-controller serve, and set FORKD_URL / FORKD_TOKEN`;
  return msg;
}
