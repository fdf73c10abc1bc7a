/**
 * E2B's control plane (`E2B_API_URL`): create, connect, list, getInfo, setTimeout, pause, kill. Both
 * generations the SDKs use are served (`/v2/sandboxes` and `/sandboxes`). Every error leaves as
 * `{"code": <status>, "message": ...}`: the SDK decides "not found" and "already paused" by that body.
 */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ForkdError } from '../../util/errors.js';
import { snapshotExists } from '../../snapshot/store.js';
import { normalizePolicy, OPEN_POLICY, type EgressPolicy } from '../../network/egress-policy.js';
import type { Controller } from '../controller.js';
import type { SandboxRecord } from '../state.js';
import type { LiveSandbox } from '../sandboxes.js';
import { DEFAULT_TIMEOUT_S, endAtMs, sandboxDetailJson, sandboxJson, type E2bOptions } from './view.js';
import { pageOf, parseMetadataQuery } from './list-query.js';
import { MetricsSampler } from './metrics.js';

const Id = z.object({ id: z.string().min(1).max(128) });
const StrMap = z.record(z.string(), z.string());
/** Seconds; E2B allows up to 24 h on its pro tier. */
const TimeoutS = z
  .number()
  .int()
  .min(0)
  .max(30 * 86400);

/** E2B's egress fields: `network` on create, and the body of PUT /sandboxes/{id}/network. */
const E2bNetwork = z.looseObject({
  allowOut: z.array(z.string().max(64)).max(256).optional(),
  denyOut: z.array(z.string().max(64)).max(256).optional(),
  rules: z.unknown().optional(),
  egressProxy: z.unknown().optional(),
});
const NetworkBody = E2bNetwork.extend({ allow_internet_access: z.boolean().optional() });

/** The forkd policy an E2B request asks for; undefined when it asks for none. */
function e2bPolicy(
  network: z.infer<typeof E2bNetwork> | undefined,
  allowInternet: boolean | undefined,
): EgressPolicy | undefined {
  if (network?.rules !== undefined || network?.egressProxy != null)
    throw new ForkdError(
      'bad_input',
      'network rules (header transforms) and egressProxy are not supported by forkd',
      'use allowOut / denyOut (IPv4 addresses and CIDRs) and allowInternetAccess',
    );
  if (!network?.allowOut && !network?.denyOut && allowInternet === undefined) return undefined;
  return normalizePolicy({
    allow_out: network?.allowOut ?? [],
    deny_out: network?.denyOut ?? [],
    allow_internet_access: allowInternet ?? true,
  });
}

// Loose: the SDKs send fields forkd has no use for (mcp, volumeMounts, secure...).
const CreateBody = z.looseObject({
  templateID: z.string().min(1).max(256),
  timeout: TimeoutS.optional(),
  metadata: StrMap.optional(),
  envVars: StrMap.optional(),
  autoPause: z.boolean().optional(),
  allow_internet_access: z.boolean().optional(),
  network: E2bNetwork.optional(),
});
const MetricsQuery = z.looseObject({
  start: z.coerce.number().int().nonnegative().optional(),
  end: z.coerce.number().int().nonnegative().optional(),
});
const TimeoutBody = z.looseObject({ timeout: TimeoutS.optional() });
const ListQuery = z.looseObject({
  state: z.string().max(64).optional(),
  metadata: z.string().max(8192).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).optional(),
  nextToken: z.string().max(64).optional(),
  order: z.enum(['asc', 'desc']).optional(),
  startedAfter: z.string().max(64).optional(),
  template: z.string().max(256).optional(),
});

/** A live sandbox by id, paused or not; gone and unknown ones are 404 (E2B: killed is not found). */
export function liveSandbox(ctl: Controller, id: string): LiveSandbox {
  const l = ctl.sandboxes.live.get(id);
  if (!l) throw new ForkdError('not_found', `sandbox ${id} not found`);
  return l;
}

export function controlRoutes(ctl: Controller, opts: E2bOptions): FastifyPluginAsyncZod {
  const resolveTemplate = (id: string): string => {
    const tag = opts.templates.get(id) ?? id;
    if (/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(tag) && snapshotExists(tag)) return tag;
    throw new ForkdError(
      'not_found',
      `template '${id}' not found: forkd serves snapshot tags as templates`,
      `make one (forkd snapshot --tag ${tag}), or map the name when starting the daemon: --e2b-template ${id}=<tag>`,
    );
  };
  const live = (id: string) => liveSandbox(ctl, id);
  const stateOf = (rec: SandboxRecord) => (rec.paused_at_unix === null ? 'running' : 'paused');

  return async (app) => {
    const create = async (b: z.infer<typeof CreateBody>) => {
      const tag = resolveTemplate(b.templateID);
      const egress = e2bPolicy(b.network, b.allow_internet_access);
      const [item] = await ctl.spawn({
        snapshot_tag: tag,
        n: 1,
        // Without network options: what the template carries (a snapshot of a networked sandbox).
        ...(egress ? { egress } : {}),
        memory_limit_mib: null,
        timeout_secs: b.timeout || DEFAULT_TIMEOUT_S,
        envs: b.envVars ?? {},
        metadata: b.metadata ?? {},
        template_id: b.templateID,
      });
      if (!item!.ok)
        throw new ForkdError('vmm_failed', `starting a sandbox from '${tag}' failed: ${item!.error}`);
      return sandboxJson(ctl, live(item!.id!).rec);
    };
    for (const url of ['/v2/sandboxes', '/sandboxes'])
      app.post(url, { schema: { hide: true, body: CreateBody } }, async (req, reply) =>
        reply.status(201).send(await create(req.body)),
      );

    const connect = async (id: string, timeout: number | undefined) => {
      const l = live(id);
      const secs = timeout || DEFAULT_TIMEOUT_S;
      if (await ctl.sandboxes.resume(id, secs)) return { status: 201, body: sandboxJson(ctl, l.rec) };
      // Running: the lifetime is only ever extended by connect.
      if (Date.now() + secs * 1000 > endAtMs(l.rec)) ctl.sandboxes.setTimeout(id, secs);
      return { status: 200, body: sandboxJson(ctl, l.rec) };
    };
    for (const url of ['/v2/sandboxes/:id/connect', '/sandboxes/:id/connect'])
      app.post(url, { schema: { hide: true, params: Id, body: TimeoutBody } }, async (req, reply) => {
        const r = await connect(req.params.id, req.body.timeout);
        return reply.status(r.status).send(r.body);
      });
    app.post(
      '/sandboxes/:id/resume',
      { schema: { hide: true, params: Id, body: TimeoutBody } },
      async (req, reply) => {
        const l = live(req.params.id);
        if (!(await ctl.sandboxes.resume(req.params.id, req.body.timeout || DEFAULT_TIMEOUT_S)))
          throw new ForkdError('conflict', `sandbox ${req.params.id} is not paused`);
        return reply.status(201).send(sandboxJson(ctl, l.rec));
      },
    );

    app.put(
      '/sandboxes/:id/network',
      { schema: { hide: true, params: Id, body: NetworkBody } },
      async (req, reply) => {
        live(req.params.id);
        const p = e2bPolicy(req.body, req.body.allow_internet_access) ?? OPEN_POLICY;
        await ctl.setSandboxNetwork(req.params.id, p, req.ip);
        return reply.status(204).send();
      },
    );

    app.get('/sandboxes/:id', { schema: { hide: true, params: Id } }, async (req) => {
      const l = live(req.params.id);
      return sandboxDetailJson(ctl, l.rec, stateOf(l.rec));
    });

    const list = (q: z.infer<typeof ListQuery>, defaultStates: string[]) => {
      const states = q.state ? q.state.split(',').filter(Boolean) : defaultStates;
      const meta = q.metadata ? parseMetadataQuery(q.metadata) : [];
      const after = q.startedAfter ? Date.parse(q.startedAfter) : undefined;
      if (after !== undefined && Number.isNaN(after))
        throw new ForkdError('bad_input', `startedAfter '${q.startedAfter}' is not an RFC 3339 date`);
      const desc = (q.order ?? 'desc') === 'desc';
      const all = [...ctl.sandboxes.live.values()]
        .map((l) => l.rec)
        .filter((r) => states.includes(stateOf(r)))
        .filter((r) => meta.every(([k, v]) => r.metadata[k] === v))
        .filter((r) => after === undefined || r.created_at_unix * 1000 >= after)
        .filter(
          (r) =>
            !q.template || (r.template_id ?? r.snapshot_tag) === q.template || r.snapshot_tag === q.template,
        )
        .sort(
          (a, b) => (a.created_at_unix - b.created_at_unix || a.id.localeCompare(b.id)) * (desc ? -1 : 1),
        );
      return pageOf(all, q);
    };
    app.get('/v2/sandboxes', { schema: { hide: true, querystring: ListQuery } }, async (req, reply) => {
      const { page, next } = list(req.query, ['running', 'paused']);
      if (next) void reply.header('x-next-token', next);
      return page.map((r) => sandboxDetailJson(ctl, r, stateOf(r)));
    });
    app.get('/sandboxes', { schema: { hide: true, querystring: ListQuery } }, async (req) =>
      list(req.query, ['running']).page.map((r) => sandboxDetailJson(ctl, r, stateOf(r))),
    );

    app.delete('/sandboxes/:id', { schema: { hide: true, params: Id } }, async (req, reply) => {
      live(req.params.id);
      await ctl.sandboxes.destroy(req.params.id);
      return reply.status(204).send();
    });

    app.post(
      '/sandboxes/:id/timeout',
      { schema: { hide: true, params: Id, body: TimeoutBody } },
      async (req, reply) => {
        live(req.params.id);
        ctl.sandboxes.setTimeout(req.params.id, req.body.timeout ?? DEFAULT_TIMEOUT_S);
        return reply.status(204).send();
      },
    );

    const metrics = new MetricsSampler(ctl);
    app.addHook('onClose', async () => metrics.close());
    app.get(
      '/sandboxes/:id/metrics',
      { schema: { hide: true, params: Id, querystring: MetricsQuery } },
      async (req) => {
        const l = live(req.params.id);
        return metrics.query(l, req.query.start, req.query.end);
      },
    );

    app.post('/sandboxes/:id/pause', { schema: { hide: true, params: Id } }, async (req, reply) => {
      live(req.params.id);
      if (!(await ctl.sandboxes.pause(req.params.id)))
        throw new ForkdError('conflict', `sandbox ${req.params.id} is already paused`);
      return reply.status(204).send();
    });
  };
}
