import { parseVolume, validateVolumes } from '../../snapshot/volumes.js';
import { PassThrough } from 'node:stream';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { EgressPolicySchema } from '../../network/egress-policy.js';
import { ForkdError } from '../../util/errors.js';
import type { ExecEvent, ExecRequest } from '../../protocol/agent-api.js';
import { emptyExecResult } from '../../protocol/agent-api.js';
import type { Controller } from '../controller.js';
import { MemoryLimitMib, Tag } from './snapshots.js';

export const IdParams = z.object({
  id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'sandbox ids are [A-Za-z0-9_-]'),
});
const StrMap = z.record(z.string(), z.string());
const Timeout = z
  .number()
  .int()
  .min(1)
  .max(30 * 86400);

const SpawnBody = z
  .object({
    snapshot_tag: Tag,
    n: z.number().int().min(1).max(1000).default(1),
    /** default: what the snapshot carries (a branch of a networked sandbox: a namespace), else none */
    per_child_netns: z.boolean().optional(),
    /** egress policy; default: the snapshot's (a fork keeps its source's), else open */
    network: EgressPolicySchema.optional(),
    memory_limit_mib: MemoryLimitMib,
    /** other files for the snapshot's volumes: "HOST:GUEST[:ro|:shared]" (snapshot/volumes.ts) */
    volumes: z.array(z.string().max(4200)).max(24).optional(),
    /** seconds until the sandbox is killed (E2B: timeoutMs) */
    timeout: Timeout.nullable().optional(),
    envs: StrMap.default({}),
    metadata: StrMap.default({}),
    prewarm: z.boolean().optional(),
    /** accepted for compatibility: every sandbox can be branched live */
    live_fork: z.boolean().optional(),
    hugepages: z.boolean().optional(),
  })
  .strict();

const ExecBody = z
  .object({
    args: z.array(z.string()).min(1).optional(),
    cmd: z.string().min(1).optional(),
    timeout_secs: z.number().min(0).max(86400).default(30),
    env: StrMap.optional(),
    cwd: z.string().optional(),
    stdin: z.string().optional(),
    stream: z.boolean().default(false),
  })
  .strict()
  .refine((b) => (b.args ? 1 : 0) + (b.cmd ? 1 : 0) === 1, {
    message: 'give exactly one of "args" (argv) or "cmd" (shell string)',
  });

const EvalBody = z
  .object({
    code: z.string(),
    language: z.enum(['python', 'js']).default('python'),
    context: z.string().max(128).optional(),
    timeout_secs: z.number().min(0).max(86400).default(30),
  })
  .strict();

const BranchBody = z
  .object({
    tag: Tag.optional(),
    mode: z.enum(['full', 'diff', 'live']).optional(),
    diff: z.boolean().optional(),
    live: z.boolean().optional(),
    measure_diff: z.boolean().optional(),
    wait: z.boolean().default(true),
    parent_tag: Tag.optional(),
  })
  .strict();

export const sandboxRoutes =
  (ctl: Controller): FastifyPluginAsyncZod =>
  async (app) => {
    app.get('/v1/sandboxes', { schema: { tags: ['sandboxes'] } }, async () => ctl.listSandboxes());

    app.post('/v1/sandboxes', { schema: { tags: ['sandboxes'], body: SpawnBody } }, async (req, reply) => {
      const b = req.body;
      if (b.hugepages)
        throw new ForkdError(
          'bad_input',
          'hugepages are not supported by the QEMU backend',
          'drop "hugepages"',
        );
      const items = await ctl.spawn({
        snapshot_tag: b.snapshot_tag,
        n: b.n,
        per_child_netns: b.per_child_netns,
        egress: b.network,
        memory_limit_mib: b.memory_limit_mib ?? null,
        timeout_secs: b.timeout ?? null,
        envs: b.envs,
        metadata: b.metadata,
        ...(b.volumes ? { volumes: validateVolumes(b.volumes.map(parseVolume)) } : {}),
      });
      const ok = items.filter((i) => i.ok).length;
      if (ok === 0)
        return reply.status(500).send({
          error: `no sandbox started: ${items[0]?.error ?? 'unknown error'}`,
          code: 'vmm_failed',
          results: items,
        });
      return reply.status(201).send(items);
    });

    app.get('/v1/sandboxes/:id', { schema: { tags: ['sandboxes'], params: IdParams } }, async (req) =>
      ctl.getSandbox(req.params.id),
    );

    // Replaces the whole policy (fields left out take their defaults), atomically.
    app.put(
      '/v1/sandboxes/:id/network',
      { schema: { tags: ['sandboxes'], params: IdParams, body: EgressPolicySchema } },
      async (req) => ctl.setSandboxNetwork(req.params.id, req.body, req.ip),
    );

    app.delete(
      '/v1/sandboxes/:id',
      { schema: { tags: ['sandboxes'], params: IdParams } },
      async (req, reply) => {
        await ctl.sandboxes.destroy(req.params.id);
        return reply.status(204).send();
      },
    );

    app.post('/v1/sandboxes/:id/ping', { schema: { tags: ['sandboxes'], params: IdParams } }, async (req) => {
      const agent = await ctl.sandboxes.agent(req.params.id);
      return agent.ping(5000);
    });

    app.post(
      '/v1/sandboxes/:id/timeout',
      {
        schema: {
          tags: ['sandboxes'],
          params: IdParams,
          body: z.object({ timeout: Timeout.nullable() }).strict(),
        },
      },
      async (req) => ctl.sandboxInfo(ctl.sandboxes.setTimeout(req.params.id, req.body.timeout)),
    );

    app.post(
      '/v1/sandboxes/:id/exec',
      { schema: { tags: ['sandboxes'], params: IdParams, body: ExecBody } },
      async (req, reply) => {
        const b = req.body;
        const live = ctl.sandboxes.get(req.params.id);
        const agent = await ctl.sandboxes.agent(req.params.id);
        const env = { ...live.rec.envs, ...(b.env ?? {}) };
        const areq: ExecRequest = {
          ...(b.args ? { argv: b.args } : { cmd: b.cmd! }),
          ...(Object.keys(env).length ? { env } : {}),
          ...(b.cwd ? { cwd: b.cwd } : {}),
          ...(b.stdin !== undefined ? { stdin: b.stdin } : {}),
          timeout_ms: Math.round(b.timeout_secs * 1000),
        };
        const t0 = performance.now();
        const wantsStream = b.stream || String(req.headers.accept ?? '').includes('application/x-ndjson');
        if (wantsStream) {
          const out = new PassThrough();
          const write = (ev: ExecEvent) => out.write(JSON.stringify(ev) + '\n');
          agent
            .exec(areq, write)
            .then(() => ctl.metrics.exec.observe((performance.now() - t0) / 1000))
            .catch((e: unknown) => write({ type: 'error', error: (e as Error).message }))
            .finally(() => out.end());
          return reply.type('application/x-ndjson').send(out);
        }
        let error: string | null = null;
        const r = await agent.exec(areq).catch((e: unknown) => {
          // A failed spawn (no such program, bad cwd) is the agent's answer, not a transport failure.
          if ((e as { status?: number }).status === 500) {
            error = (e as Error).message;
            return null;
          }
          throw e;
        });
        ctl.metrics.exec.observe((performance.now() - t0) / 1000);
        if (!r) return { ...emptyExecResult(), error };
        return { ...r, error: r.timed_out ? `timed out after ${b.timeout_secs} s` : null };
      },
    );

    app.post(
      '/v1/sandboxes/:id/eval',
      { schema: { tags: ['sandboxes'], params: IdParams, body: EvalBody } },
      async (req) => {
        const b = req.body;
        const guest = ctl.sandboxes.get(req.params.id).guest;
        const t0 = performance.now();
        const r = await guest.eval({
          code: b.code,
          language: b.language,
          ...(b.context ? { context: b.context } : {}),
          timeout_ms: Math.round(b.timeout_secs * 1000),
        });
        ctl.metrics.evalh.observe((performance.now() - t0) / 1000);
        return {
          ...r,
          error: r.error ? `${r.error.type}: ${r.error.message}` : null,
          error_type: r.error?.type ?? null,
          traceback: r.error?.traceback ?? null,
          exit_code: r.ok ? 0 : 1,
        };
      },
    );

    app.post(
      '/v1/sandboxes/:id/branch',
      { schema: { tags: ['sandboxes'], params: IdParams, body: BranchBody } },
      async (req, reply) => {
        const b = req.body;
        const out = await ctl.branches.branch(req.params.id, {
          tag: b.tag,
          mode: b.mode,
          diff: b.diff,
          live: b.live,
          measure_diff: b.measure_diff,
          parent_tag: b.parent_tag,
        });
        const base = {
          tag: out.started.tag,
          dir: out.started.dir,
          branched_from: req.params.id,
          mode: out.started.mode,
          pause_ms: out.started.pauseMs,
          ...(out.started.diff
            ? {
                diff_ms: Math.round((out.started.diff.pagemapMs + out.started.diff.copyMs) * 10) / 10,
                diff_physical_bytes: out.started.diff.bytes,
              }
            : {}),
        };
        if (!b.wait)
          return reply
            .status(202)
            .send({ ...ctl.snapshotInfo(out.started.tag), ...base, status: 'writing', bootable: false });
        const rec = await out.finished;
        if (rec.status !== 'ready') throw new ForkdError('vmm_failed', rec.warning ?? 'branch failed');
        return reply.status(201).send({ ...ctl.snapshotInfo(out.started.tag), ...base });
      },
    );
  };
