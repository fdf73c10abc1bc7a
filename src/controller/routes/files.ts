import type { Readable } from 'node:stream';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ForkdError } from '../../util/errors.js';
import type { Controller } from '../controller.js';
import { IdParams } from './sandboxes.js';

const AbsPath = z
  .string()
  .min(1)
  .refine((p) => p.startsWith('/'), 'must be an absolute path');

/** Sandbox filesystem: streamed read/write (never buffered whole in the daemon), list, stat, remove, mkdir. */
export const fileRoutes =
  (ctl: Controller): FastifyPluginAsyncZod =>
  async (app) => {
    const tags = ['files'];
    app.get(
      '/v1/sandboxes/:id/files',
      { schema: { tags, params: IdParams, querystring: z.object({ path: AbsPath }) } },
      async (req, reply) => {
        const agent = await ctl.sandboxes.agent(req.params.id);
        const { stream, size } = await agent.readFile(req.query.path);
        if (size !== undefined) void reply.header('content-length', size);
        return reply.type('application/octet-stream').send(stream);
      },
    );

    app.put(
      '/v1/sandboxes/:id/files',
      {
        schema: {
          tags,
          params: IdParams,
          querystring: z.object({
            path: AbsPath,
            mode: z
              .string()
              .regex(/^[0-7]{3,4}$/)
              .optional(),
          }),
        },
      },
      async (req) => {
        const agent = await ctl.sandboxes.agent(req.params.id);
        const body = req.body as unknown;
        let src: Readable | Buffer | string;
        if (typeof body === 'string' || Buffer.isBuffer(body)) src = body;
        else if (body && typeof (body as Readable).pipe === 'function') src = body as Readable;
        else
          throw new ForkdError(
            'bad_input',
            'send the file content as the request body with Content-Type: application/octet-stream',
          );
        return agent.writeFile(
          req.query.path,
          src,
          req.query.mode ? Number.parseInt(req.query.mode, 8) : undefined,
        );
      },
    );

    app.get(
      '/v1/sandboxes/:id/files/list',
      {
        schema: {
          tags,
          params: IdParams,
          querystring: z.object({ path: AbsPath, depth: z.coerce.number().int().min(1).max(64).default(1) }),
        },
      },
      async (req) => (await ctl.sandboxes.agent(req.params.id)).listFiles(req.query.path, req.query.depth),
    );

    app.get(
      '/v1/sandboxes/:id/files/stat',
      { schema: { tags, params: IdParams, querystring: z.object({ path: AbsPath }) } },
      async (req) => (await ctl.sandboxes.agent(req.params.id)).statFile(req.query.path),
    );

    app.delete(
      '/v1/sandboxes/:id/files',
      {
        schema: {
          tags,
          params: IdParams,
          querystring: z.object({ path: AbsPath, recursive: z.stringbool().default(false) }),
        },
      },
      async (req) =>
        (await ctl.sandboxes.agent(req.params.id)).removeFile(req.query.path, req.query.recursive),
    );

    app.post(
      '/v1/sandboxes/:id/files/mkdir',
      { schema: { tags, params: IdParams, body: z.object({ path: AbsPath }).strict() } },
      async (req) => (await ctl.sandboxes.agent(req.params.id)).makeDir(req.body.path),
    );
  };
