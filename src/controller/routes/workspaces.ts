import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { EgressPolicySchema } from '../../network/egress-policy.js';
import type { Controller } from '../controller.js';
import { MemoryLimitMib, Tag } from './snapshots.js';

const NameParams = z.object({ name: Tag });

export const workspaceRoutes =
  (ctl: Controller): FastifyPluginAsyncZod =>
  async (app) => {
    const tags = ['workspaces'];
    app.get('/v1/workspaces', { schema: { tags } }, async () => ctl.listWorkspaces());
    app.post(
      '/v1/workspaces',
      {
        schema: {
          tags,
          body: z
            .object({
              name: Tag,
              snapshot_tag: Tag,
              per_child_netns: z.boolean().default(false),
              network: EgressPolicySchema.optional(),
              memory_limit_mib: MemoryLimitMib,
              envs: z.record(z.string(), z.string()).default({}),
            })
            .strict(),
        },
      },
      async (req, reply) =>
        reply.status(201).send(
          await ctl.createWorkspace({
            name: req.body.name,
            snapshot_tag: req.body.snapshot_tag,
            per_child_netns: req.body.per_child_netns,
            egress: req.body.network,
            memory_limit_mib: req.body.memory_limit_mib ?? null,
            envs: req.body.envs,
          }),
        ),
    );
    app.get('/v1/workspaces/:name', { schema: { tags, params: NameParams } }, async (req) =>
      ctl.getWorkspace(req.params.name),
    );
    app.delete('/v1/workspaces/:name', { schema: { tags, params: NameParams } }, async (req, reply) => {
      await ctl.deleteWorkspace(req.params.name);
      return reply.status(204).send();
    });
    app.post(
      '/v1/workspaces/:name/suspend',
      {
        schema: {
          tags,
          params: NameParams,
          body: z
            .object({ diff: z.boolean().default(false) })
            .strict()
            .default({ diff: false }),
        },
      },
      async (req) => ctl.suspendWorkspace(req.params.name, req.body.diff),
    );
    app.post('/v1/workspaces/:name/resume', { schema: { tags, params: NameParams } }, async (req) =>
      ctl.resumeWorkspace(req.params.name),
    );
  };
