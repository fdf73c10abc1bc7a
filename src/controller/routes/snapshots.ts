import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { createSnapshot } from '../../snapshot/create.js';
import { compactSnapshot } from '../../snapshot/compact.js';
import { snapshotDetail } from '../../snapshot/lineage.js';
import { silentReporter } from '../../util/report.js';
import { ForkdError } from '../../util/errors.js';
import type { Controller } from '../controller.js';

export const Tag = z.string().min(1).max(64);
/** A sandbox's memory cap (cgroup), shared by spawn and workspace routes. */
export const MemoryLimitMib = z
  .number()
  .int()
  .min(64)
  .max(1 << 20)
  .nullable()
  .optional();
const TagParams = z.object({ tag: Tag });
const QueryBool = z.stringbool().optional();

const CreateSnapshotBody = z
  .object({
    tag: Tag,
    recipe: z.string().optional(),
    extras: z.array(z.string()).max(64).optional(),
    kernel: z.string().optional(),
    initrd: z.string().optional(),
    rootfs: z.string().optional(),
    /** accepted for compatibility: root disks are always copy-on-write per child */
    rw: z.boolean().optional(),
    mem_size_mib: z.number().int().min(128).max(65536).optional(),
    vcpus: z.number().int().min(1).max(64).optional(),
    boot_wait_secs: z.number().int().min(0).max(60).optional(),
    warmup: z.string().min(1).optional(),
    warmup_eval: z.string().min(1).optional(),
    net: z.boolean().optional(),
  })
  .strict();

export const snapshotRoutes =
  (ctl: Controller): FastifyPluginAsyncZod =>
  async (app) => {
    app.get('/v1/snapshots', { schema: { tags: ['snapshots'] } }, async () => ctl.listSnapshots());

    app.post(
      '/v1/snapshots',
      { schema: { tags: ['snapshots'], body: CreateSnapshotBody } },
      async (req, reply) => {
        const b = req.body;
        if (ctl.listSnapshots().some((s) => s.tag === b.tag))
          throw new ForkdError('exists', `snapshot '${b.tag}' already exists; DELETE first`);
        const done = ctl.beginCreate(b.tag);
        try {
          await createSnapshot(
            {
              tag: b.tag,
              ...(b.recipe ? { recipe: b.recipe } : {}),
              ...(b.extras ? { extras: b.extras } : {}),
              ...(b.kernel ? { kernel: b.kernel } : {}),
              ...(b.initrd ? { initrd: b.initrd } : {}),
              ...(b.rootfs ? { rootfs: b.rootfs } : {}),
              ...(b.mem_size_mib ? { memMib: b.mem_size_mib } : {}),
              ...(b.vcpus ? { vcpus: b.vcpus } : {}),
              ...(b.boot_wait_secs !== undefined ? { bootWaitSecs: b.boot_wait_secs } : {}),
              ...(b.warmup ? { warmup: b.warmup } : {}),
              ...(b.warmup_eval ? { warmupEval: b.warmup_eval } : {}),
              ...(b.net ? { net: true } : {}),
            },
            silentReporter,
          );
        } finally {
          done();
        }
        return reply.status(201).send(ctl.snapshotInfo(b.tag));
      },
    );

    app.delete(
      '/v1/snapshots/:tag',
      {
        schema: {
          tags: ['snapshots'],
          params: TagParams,
          querystring: z.object({ cascade: QueryBool, force: QueryBool }),
        },
      },
      async (req, reply) => {
        ctl.deleteSnapshot(req.params.tag, {
          ...(req.query.cascade ? { cascade: true } : {}),
          ...(req.query.force ? { force: true } : {}),
        });
        return reply.status(204).send();
      },
    );

    app.get(
      '/v1/snapshots/:tag/info',
      { schema: { tags: ['snapshots'], params: TagParams } },
      async (req) => {
        const st = ctl.listSnapshots().find((s) => s.tag === req.params.tag);
        if (st && st.status === 'writing')
          throw new ForkdError('conflict', `snapshot '${req.params.tag}' is still being written`);
        return snapshotDetail(req.params.tag);
      },
    );

    app.post(
      '/v1/snapshots/:tag/compact',
      { schema: { tags: ['snapshots'], params: TagParams, body: z.object({ to: Tag }).strict() } },
      async (req) => {
        const done = ctl.beginCreate(req.body.to);
        try {
          await compactSnapshot(req.params.tag, req.body.to);
        } finally {
          done();
        }
        return { ...ctl.snapshotInfo(req.body.to), branched_from: `compact:${req.params.tag}` };
      },
    );
  };
