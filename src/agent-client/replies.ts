import { z } from 'zod';

/**
 * Schemas for everything the guest agent sends back. The guest runs untrusted code as root: it can kill
 * the agent and answer in its place, so a reply is data to validate, never a typed value to cast.
 * Objects are loose (unknown fields pass) so a newer agent can add fields; the fields forkd reads are
 * checked, and strings are bounded by the reply size limits in client.ts.
 */

const int = z.number().int();
const nonNeg = z.number().nonnegative();

export const PingSchema = z.looseObject({
  ok: z.literal(true),
  agent_version: int,
  pid: int,
  uptime_s: nonNeg,
  hostname: z.string(),
  sandbox_id: z.string().nullable(),
  node_version: z.string(),
  python: z.looseObject({
    ready: z.boolean(),
    version: z.string().optional(),
    numpy: z.string().nullable().optional(),
    error: z.string().optional(),
  }),
  epoch: int,
});

/** The Python worker's own ping on its port (pyworker.py). */
export const PythonPingSchema = z.looseObject({
  ok: z.literal(true),
  python: z.string(),
  numpy: z.string().nullable(),
  pid: int,
});

export const IdentityResultSchema = z.looseObject({
  hostname: z.string(),
  clock_set: z.boolean(),
  clock_skew_before_ms: z.number().nullable(),
  kernel_rng_reseeded: z.boolean(),
  python_reseeded: z.boolean(),
  took_ms: nonNeg,
});

export const SettleResultSchema = z.looseObject({
  js_gc: z.boolean(),
  heap_used: z.number(),
  python: z.looseObject({ collected: z.number(), frozen: z.number() }).nullable(),
});
export const EvalResultSchema = z.looseObject({
  ok: z.boolean(),
  result: z.string().nullable(),
  result_json: z.unknown().optional(),
  stdout: z.string(),
  stderr: z.string(),
  error: z.looseObject({ type: z.string(), message: z.string(), traceback: z.string() }).optional(),
  duration_ms: nonNeg,
  formats: z.record(z.string(), z.unknown()).optional(),
  displays: z.array(z.record(z.string(), z.unknown())).max(1000).optional(),
});

export const ExecEventSchema = z.discriminatedUnion('type', [
  z.looseObject({ type: z.literal('start'), pid: int }),
  z.looseObject({ type: z.literal('stdout'), data: z.string() }),
  z.looseObject({ type: z.literal('stderr'), data: z.string() }),
  z.looseObject({
    type: z.literal('exit'),
    exit_code: int.nullable(),
    signal: z.string().nullable(),
    timed_out: z.boolean(),
    duration_ms: nonNeg,
  }),
  z.looseObject({ type: z.literal('error'), error: z.string() }),
]);

export const FileEntrySchema = z.looseObject({
  name: z.string(),
  path: z.string(),
  type: z.enum(['file', 'dir', 'symlink', 'other']),
  size: nonNeg,
  mode: int,
  mtime_ms: z.number(),
  uid: int.optional(),
  gid: int.optional(),
  owner: z.string().max(256).optional(),
  group: z.string().max(256).optional(),
  symlink_target: z.string().max(4096).optional(),
  created: z.boolean().optional(),
});

export const FileListSchema = z.looseObject({ entries: z.array(FileEntrySchema) });
export const RemovedSchema = z.looseObject({ removed: z.string() });
export const MountedSchema = z.looseObject({ device: z.string() });
export const UnmountedSchema = z.looseObject({ unmounted: z.string() });
export const AgentErrorBodySchema = z.looseObject({ error: z.string(), code: z.string().optional() });

/** The first problem of a failed parse, short enough for an error message (never the whole reply). */
export function firstIssue(err: z.ZodError): string {
  const i = err.issues[0];
  if (!i) return 'invalid';
  const where = i.path.length ? i.path.map(String).join('.').slice(0, 80) : 'reply';
  return `${where}: ${i.message.slice(0, 160)}`;
}

export const ProcEventSchema = z.discriminatedUnion('type', [
  z.looseObject({ type: z.literal('start'), pid: int.positive() }),
  z.looseObject({
    type: z.literal('data'),
    stream: z.enum(['stdout', 'stderr', 'pty']),
    data: z.base64(),
  }),
  z.looseObject({ type: z.literal('end'), exit_code: int.nullable(), signal: z.string().max(32).nullable() }),
]);

export const ProcListSchema = z.looseObject({
  processes: z
    .array(
      z.looseObject({
        pid: int.positive(),
        argv: z.array(z.string()).min(1),
        env: z.record(z.string(), z.string()),
        cwd: z.string(),
        tag: z.string().optional(),
      }),
    )
    .max(4096),
});

export const EmptySchema = z.looseObject({});

export const DroppedSchema = z.looseObject({ ok: z.literal(true), dropped: z.boolean() });

export const WatchEventSchema = z.discriminatedUnion('type', [
  z.looseObject({ type: z.literal('start') }),
  z.looseObject({
    type: z.literal('event'),
    name: z.string().max(4096),
    op: z.enum(['create', 'write', 'remove']),
  }),
]);
