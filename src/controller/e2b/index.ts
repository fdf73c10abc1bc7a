/**
 * The E2B API, served by the daemon itself so that E2B's official SDKs work unmodified with
 * `E2B_API_URL` and `E2B_SANDBOX_URL` both set to the daemon's address and `E2B_API_KEY` to its token:
 * the control plane (path-routed, `X-API-KEY`) and the sandbox plane (header-routed by
 * `E2b-Sandbox-Id`/`E2b-Sandbox-Port`, `X-Access-Token`): envd's HTTP routes and Connect services.
 */
import { createContextValues } from '@connectrpc/connect';
import { fastifyConnectPlugin } from '@connectrpc/connect-fastify';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { sameSecret } from '../auth.js';
import type { Controller } from '../controller.js';
import { statusOf } from '../http-errors.js';
import { kPlane, kRaw } from './connect-util.js';
import { controlRoutes } from './control.js';
import { snapshotRoutes } from './control-snapshots.js';
import { filesystemService } from './envd-filesystem.js';
import { envdHttpRoutes } from './envd-http.js';
import { processService } from './envd-process.js';
import { Filesystem } from './gen/filesystem/filesystem_pb.js';
import { Process } from './gen/process/process_pb.js';
import { ENVD_PORT, INTERPRETER_PORT, sandboxPlaneHook } from './sandbox-plane.js';
import { interpreterRoutes } from './interpreter.js';
import type { E2bOptions } from './view.js';

export type { E2bOptions } from './view.js';

/** The route URLs this plugin serves: the daemon's bearer check leaves them to the E2B checks here. */
export const e2bRouteUrls = new Set<string>();

/** E2B's error body: `{code: <status>, message}`, the shape the SDK reads. */
function e2bErrorHandler(err: FastifyError | Error, _req: FastifyRequest, reply: FastifyReply): void {
  const status = hasZodFastifySchemaValidationErrors(err) ? 400 : statusOf(err);
  const hint = (err as { hint?: string }).hint;
  void reply.status(status).send({ code: status, message: hint ? `${err.message} (${hint})` : err.message });
}

export async function registerE2b(
  app: FastifyInstance,
  ctl: Controller,
  opts: E2bOptions & { token?: string | undefined },
): Promise<void> {
  await app.register(async (control) => {
    control.addHook('onRoute', (r) => void e2bRouteUrls.add(r.url));
    control.setErrorHandler(e2bErrorHandler);
    control.addHook('onRequest', async (req, reply) => {
      if (!opts.token) return; // the daemon runs without auth (loopback only): so does this
      const key = req.headers['x-api-key'];
      if (typeof key !== 'string' || !sameSecret(key, opts.token))
        return reply.status(401).send({
          code: 401,
          message: key ? 'invalid API key' : 'missing X-API-KEY: set E2B_API_KEY to the daemon token',
        });
    });
    await control.register(controlRoutes(ctl, opts));
    await control.register(snapshotRoutes(ctl));
  });

  await app.register(async (envd) => {
    envd.addHook('onRoute', (r) => void e2bRouteUrls.add(r.url));
    envd.setErrorHandler(e2bErrorHandler);
    envd.addHook('onRequest', sandboxPlaneHook(ctl, ENVD_PORT));
    await envd.register(envdHttpRoutes());
    // Connect parses its own bodies (JSON included): this scope must not hold the daemon's JSON parser.
    envd.removeContentTypeParser('application/json');
    await envd.register(fastifyConnectPlugin, {
      grpc: false,
      grpcWeb: false,
      routes: (router) => {
        router.service(Process, processService);
        router.service(Filesystem, filesystemService);
      },
      contextValues: (req) => createContextValues().set(kPlane, req.e2b).set(kRaw, req),
    });
  });

  await app.register(async (interp) => {
    interp.addHook('onRoute', (r) => void e2bRouteUrls.add(r.url));
    interp.setErrorHandler(e2bErrorHandler);
    interp.addHook('onRequest', sandboxPlaneHook(ctl, INTERPRETER_PORT));
    await interp.register(interpreterRoutes(ctl));
  });
}
