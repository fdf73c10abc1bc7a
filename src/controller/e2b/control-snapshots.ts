/**
 * E2B's fork and snapshot calls on the control plane, as forkd branches: `fork` branches the sandbox
 * once and starts `count` children from it (the source keeps its id and expiry); `createSnapshot`
 * branches into a tag that creates sandboxes as a template; `deleteSnapshot` deletes the tag.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ForkdError, errorMessage } from '../../util/errors.js';
import type { Controller } from '../controller.js';
import { statusOf } from '../http-errors.js';
import { liveSandbox } from './control.js';
import { pageOf } from './list-query.js';
import { sandboxJson } from './view.js';

/** Tags of fork snapshots: forkd's, not the user's; deleted once no sandbox runs on them. */
export const FORK_TAG_PREFIX = 'e2b-fork-';
/** E2B's lifetime of a fork when the call gives none, seconds. */
const FORK_DEFAULT_TIMEOUT_S = 15;
const MAX_FORKS = 100;

const Id = z.object({ id: z.string().min(1).max(128) });
const ForkBody = z.looseObject({
  timeout: z
    .number()
    .int()
    .min(0)
    .max(30 * 86400)
    .optional(),
  count: z.number().int().min(1).max(MAX_FORKS).optional(),
});
const SnapshotBody = z.looseObject({ name: z.string().max(256).optional() });
const SnapshotQuery = z.looseObject({
  sandboxID: z.string().max(128).optional(),
  name: z.string().max(256).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).optional(),
  nextToken: z.string().max(64).optional(),
});

const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Branch a sandbox into `tag` and wait until the snapshot is ready. */
async function branchReady(ctl: Controller, id: string, tag: string): Promise<void> {
  const out = await ctl.branches.branch(id, { tag, mode: 'full' });
  const rec = await out.finished;
  if (rec.status !== 'ready')
    throw new ForkdError(
      'vmm_failed',
      `snapshotting sandbox ${id} failed: ${rec.warning ?? 'unknown error'}`,
    );
}

/** Delete fork snapshots no sandbox runs on any more. */
export function sweepForkSnapshots(ctl: Controller): void {
  const inUse = new Set([...ctl.sandboxes.live.values()].map((l) => l.rec.snapshot_tag));
  for (const s of ctl.listSnapshots())
    if (s.tag.startsWith(FORK_TAG_PREFIX) && s.status !== 'writing' && !inUse.has(s.tag))
      try {
        ctl.deleteSnapshot(s.tag, { cascade: false });
      } catch (e) {
        ctl.opts.log(`could not delete fork snapshot ${s.tag}: ${errorMessage(e)}`);
      }
}

export function snapshotRoutes(ctl: Controller): FastifyPluginAsyncZod {
  const live = (id: string) => liveSandbox(ctl, id);
  return async (app) => {
    const sweeper = setInterval(() => sweepForkSnapshots(ctl), 10_000);
    sweeper.unref();
    app.addHook('onClose', async () => clearInterval(sweeper));

    app.post(
      '/sandboxes/:id/fork',
      { schema: { hide: true, params: Id, body: ForkBody } },
      async (req, reply) => {
        const src = live(req.params.id).rec;
        const tag = `${FORK_TAG_PREFIX}${randomBytes(6).toString('hex')}`;
        await branchReady(ctl, src.id, tag);
        const items = await ctl.spawn({
          snapshot_tag: tag,
          n: req.body.count ?? 1,
          per_child_netns: src.netns !== null,
          memory_limit_mib: src.memory_limit_mib,
          timeout_secs: req.body.timeout || FORK_DEFAULT_TIMEOUT_S,
          envs: src.envs,
          metadata: src.metadata,
          template_id: src.template_id ?? src.snapshot_tag,
        });
        sweepForkSnapshots(ctl); // when every child failed, nothing runs on it
        return reply.status(201).send(
          items.map((it) => {
            const rec = it.ok ? ctl.sandboxes.live.get(it.id!)?.rec : undefined;
            if (rec) return { sandbox: sandboxJson(ctl, rec) };
            return { error: { code: 500, message: it.error ?? 'the fork did not start' } };
          }),
        );
      },
    );

    app.post(
      '/sandboxes/:id/snapshots',
      { schema: { hide: true, params: Id, body: SnapshotBody } },
      async (req, reply) => {
        live(req.params.id);
        const name = req.body.name;
        if (name !== undefined && !TAG_RE.test(name))
          throw new ForkdError(
            'bad_input',
            `snapshot name '${name}' is not a forkd tag`,
            'use 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit',
          );
        const tag = name ?? `snap-${randomBytes(6).toString('hex')}`;
        await branchReady(ctl, req.params.id, tag);
        return reply.status(201).send({ snapshotID: tag, names: [tag] });
      },
    );

    app.get('/snapshots', { schema: { hide: true, querystring: SnapshotQuery } }, async (req, reply) => {
      const q = req.query;
      const all = ctl
        .listSnapshots()
        .filter((s) => s.branched_from && s.status === 'ready' && !s.tag.startsWith(FORK_TAG_PREFIX))
        .filter((s) => !q.sandboxID || s.branched_from === q.sandboxID)
        .filter((s) => !q.name || s.tag.includes(q.name))
        .sort((a, b) => b.created_at_unix - a.created_at_unix || a.tag.localeCompare(b.tag));
      const { page, next } = pageOf(all, q);
      if (next) void reply.header('x-next-token', next);
      return page.map((s) => ({ snapshotID: s.tag, names: [s.tag] }));
    });

    app.delete('/templates/:id', { schema: { hide: true, params: Id } }, async (req, reply) => {
      const tag = req.params.id;
      if (!TAG_RE.test(tag) || !ctl.listSnapshots().some((s) => s.tag === tag))
        throw new ForkdError('not_found', `snapshot '${tag}' not found`);
      try {
        ctl.deleteSnapshot(tag, { cascade: false });
      } catch (e) {
        if (statusOf(e) === 404) throw new ForkdError('not_found', `snapshot '${tag}' not found`);
        throw e;
      }
      return reply.status(204).send();
    });
  };
}
