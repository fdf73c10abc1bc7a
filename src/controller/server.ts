import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import swagger from '@fastify/swagger';
import {
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { forkdVersion } from '../util/project.js';
import { AuditLog } from './audit.js';
import { checkBearer } from './auth.js';
import { errorHandler } from './http-errors.js';
import type { Controller } from './controller.js';
import { systemRoutes } from './routes/system.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { fileRoutes } from './routes/files.js';
import { workspaceRoutes } from './routes/workspaces.js';

export interface ServerOptions {
  token?: string | undefined;
  auditLog?: string | undefined;
  tls?: { cert: string; key: string } | undefined;
  /** pino logger options; false = silent (tests) */
  logger?: boolean | object;
}

/** The REST API: fastify with zod-validated routes, bearer auth, audit log, metrics, OpenAPI. */
export async function buildServer(ctl: Controller, opts: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? { level: process.env.FORKD_LOG_LEVEL ?? 'info' },
    genReqId: () => randomBytes(6).toString('hex'),
    bodyLimit: 64 << 20,
    ...(opts.tls
      ? { https: { cert: fs.readFileSync(opts.tls.cert), key: fs.readFileSync(opts.tls.key) } }
      : {}),
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({
      error: `no route ${req.method} ${req.url.split('?')[0]}`,
      code: 'not_found',
      hint: 'see GET /openapi.json',
    });
  });
  // JSON in, JSON out (and raw bytes for files): anything else is 415, not guessed at.
  app.removeContentTypeParser('text/plain');
  // File uploads: the raw body stream goes straight to the guest (no buffering, no size limit here).
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  // An empty POST with a JSON content type is an empty object, not an error (e.g. ping, resume).
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (!text.trim()) return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch (e) {
      const err = new Error(`request body is not valid JSON: ${(e as Error).message}`) as Error & {
        statusCode: number;
        code: string;
      };
      err.statusCode = 400;
      err.code = 'bad_json';
      done(err, undefined);
    }
  });

  const audit = opts.auditLog ? new AuditLog(opts.auditLog) : undefined;
  app.addHook('onRequest', async (req, reply) => {
    (req as { t0?: bigint }).t0 = process.hrtime.bigint();
    if (!opts.token) return;
    const p = req.url.split('?')[0];
    if (p === '/healthz' || p === '/healthz/') return;
    const r = checkBearer(req.headers.authorization, opts.token);
    if (r !== 'ok')
      return reply.status(401).send({
        error: r === 'missing' ? 'missing bearer token' : 'invalid bearer token',
        code: 'unauthorized',
        hint: 'send Authorization: Bearer <token> (FORKD_TOKEN)',
      });
  });
  app.addHook('onResponse', async (req, reply) => {
    const t0 = (req as { t0?: bigint }).t0 ?? process.hrtime.bigint();
    const us = Number((process.hrtime.bigint() - t0) / 1000n);
    const route = req.routeOptions.url ?? 'unmatched';
    ctl.metrics.http.observe({ method: req.method, route, status: String(reply.statusCode) }, us / 1e6);
    audit?.write({
      ts: new Date().toISOString(),
      method: req.method,
      path: req.url.split('?')[0]!,
      status: reply.statusCode,
      latency_us: us,
      remote: req.ip,
      ua: req.headers['user-agent'] ?? null,
      request_id: req.id,
    });
  });
  app.addHook('onClose', async () => {
    await audit?.close();
  });

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'forkd controller',
        version: forkdVersion(),
        description: 'Fork warm microVMs: snapshots, sandboxes, branches, workspaces.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });
  await app.register(systemRoutes(ctl));
  await app.register(snapshotRoutes(ctl));
  await app.register(sandboxRoutes(ctl));
  await app.register(fileRoutes(ctl));
  await app.register(workspaceRoutes(ctl));
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
