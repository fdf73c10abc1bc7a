import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { forkdVersion } from '../../util/project.js';
import { readCachedProbe } from '../../host/accel.js';
import type { Controller } from '../controller.js';

export const systemRoutes =
  (ctl: Controller): FastifyPluginAsyncZod =>
  async (app) => {
    app.get(
      '/healthz',
      { schema: { tags: ['system'], security: [], response: { 200: z.object({ ok: z.literal(true) }) } } },
      async () => ({
        ok: true as const,
      }),
    );
    app.get('/version', { schema: { tags: ['system'] } }, async () => {
      const probe = readCachedProbe();
      return {
        version: forkdVersion(),
        api: 'v1',
        vmm: 'qemu',
        accelerator: probe?.accel ?? null,
        accelerator_reason: probe?.reason ?? null,
      };
    });
    app.get('/metrics', { schema: { tags: ['system'] } }, async (_req, reply) => {
      const text = await ctl.metrics.registry.metrics();
      return reply.type('text/plain; version=0.0.4; charset=utf-8').send(text);
    });
  };
