import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { randomBytes } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyServerFactory } from 'fastify';
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
import { checkJsonShape, JSON_BODY_LIMIT, REQUEST_TIMEOUT_MS, CONNECTION_TIMEOUT_MS } from './limits.js';
import type { Controller } from './controller.js';
import { systemRoutes } from './routes/system.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { fileRoutes } from './routes/files.js';
import { workspaceRoutes } from './routes/workspaces.js';
import { e2bRouteUrls, registerE2b } from './e2b/index.js';
import { PortProxy } from './e2b/port-proxy.js';

export interface ServerOptions {
  token?: string | undefined;
  auditLog?: string | undefined;
  tls?: { cert: string; key: string } | undefined;
  /** pino logger options; false = silent (tests) */
  logger?: boolean | object;
  /** E2B template names → snapshot tags (the E2B API, src/controller/e2b/). */
  e2bTemplates?: Map<string, string>;
}

/** The REST API: fastify with zod-validated routes, bearer auth, audit log, metrics, OpenAPI. */
export async function buildServer(ctl: Controller, opts: ServerOptions): Promise<FastifyInstance> {
  const tls = opts.tls
    ? { cert: fs.readFileSync(opts.tls.cert), key: fs.readFileSync(opts.tls.key) }
    : undefined;
  // Our own server object so that Node's HTTP layer does not answer requests behind fastify's back:
  // without a Host header it would send an empty 400 itself, and 'Expect: <other>' an empty 417, both
  // outside the error shape and the audit log.
  // Requests for ports inside sandboxes (by Host, E2B-style) and port-forward streams are tunnelled
  // before fastify sees them (e2b/port-proxy.ts).
  const ports = new PortProxy(ctl, opts.token);
  const serverFactory: FastifyServerFactory = (handler) => {
    const o = { requireHostHeader: false };
    const route: http.RequestListener = (req, res) => {
      if (ports.handles(req)) void ports.request(req, res);
      else handler(req, res);
    };
    const server = tls ? https.createServer({ ...o, ...tls }, route) : http.createServer(o, route);
    server.on('upgrade', (req, socket, head) => {
      ports.upgrade(req, socket, head).then(
        (handled) => handled || socket.destroy(),
        () => socket.destroy(),
      );
    });
    server.on('checkExpectation', (req, res) => {
      req.headers['x-forkd-expectation-failed'] = String(req.headers.expect ?? '');
      handler(req, res);
    });
    return server;
  };
  const audit = opts.auditLog ? new AuditLog(opts.auditLog) : undefined;
  if (audit) ctl.audit.on('event', (e: { event: string }) => audit.event(e));
  const app = Fastify({
    logger: opts.logger ?? { level: process.env.FORKD_LOG_LEVEL ?? 'info' },
    genReqId: () => randomBytes(6).toString('hex'),
    bodyLimit: JSON_BODY_LIMIT,
    // A client that trickles its request (headers or body) cannot hold a connection for ever.
    requestTimeout: REQUEST_TIMEOUT_MS,
    connectionTimeout: CONNECTION_TIMEOUT_MS,
    serverFactory,
    // Bad URLs and over-long path parameters are answered by fastify before any hook runs.
    frameworkErrors: (err, req, reply) => {
      const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400;
      audit?.write({
        ts: new Date().toISOString(),
        method: req.method,
        path: req.url.split('?')[0]!.slice(0, 256),
        status,
        latency_us: 0,
        remote: req.ip,
        ua: req.headers['user-agent'] ?? null,
        request_id: req.id,
      });
      void (reply as FastifyReply).status(status).send({
        error: err.message.slice(0, 300),
        code: 'bad_input',
        hint: 'ids and tags are at most 64 characters; see GET /openapi.json',
      });
    },
    // Requests Node's parser rejects (bad request line, headers too large, timed out) never reach a
    // route; they still get the JSON error shape and an audit line.
    clientErrorHandler: (err, socket) => {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
      audit?.write({
        ts: new Date().toISOString(),
        method: '-',
        path: '-',
        status,
        latency_us: 0,
        remote: socket.remoteAddress ?? 'unix',
        ua: null,
        request_id: 'client-error',
      });
      if (!socket.writable) return socket.destroy();
      const body = JSON.stringify({
        error: `malformed HTTP request (${code || err.message.slice(0, 100)})`,
        code: 'bad_input',
        hint:
          status === 431 ? 'send shorter headers and URL (16 KiB at most)' : 'send a valid HTTP/1.1 request',
      });
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    },
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
  app.addContentTypeParser(
    'application/json',
    { parseAs: 'string', bodyLimit: JSON_BODY_LIMIT },
    (_req, body, done) => {
      const text = String(body);
      if (!text.trim()) return done(null, {});
      const fail = (msg: string) => {
        const err = new Error(msg) as Error & { statusCode: number; code: string };
        err.statusCode = 400;
        err.code = 'bad_json';
        done(err, undefined);
      };
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (e) {
        return fail(`request body is not valid JSON: ${(e as Error).message.slice(0, 200)}`);
      }
      // Refused before validation: a schema would report every one of a million bad elements.
      const shape = checkJsonShape(value);
      if (shape) return fail(shape);
      done(null, value);
    },
  );

  // While a handler works (an exec may run for an hour) the connection is silent by design; the
  // connection timeout guards receiving the request and idle connections, not the work.
  // (fastify inject's fake socket has no timeout to set.)
  const socketTimeout = (req: { raw: { socket?: { setTimeout?: unknown } } }, ms: number) => {
    const sock = req.raw.socket as { setTimeout?: (ms: number) => void } | undefined;
    if (typeof sock?.setTimeout === 'function') sock.setTimeout(ms);
  };
  app.addHook('preHandler', async (req) => socketTimeout(req, 0));
  app.addHook('onResponse', async (req) => socketTimeout(req, CONNECTION_TIMEOUT_MS));
  app.addHook('onRequest', async (req, reply) => {
    const expect = req.headers['x-forkd-expectation-failed'];
    if (expect === undefined) return;
    return reply.status(417).send({
      error: `unsupported Expect header: ${String(expect).slice(0, 100)}`,
      code: 'bad_input',
      hint: "send no Expect header, or 'Expect: 100-continue'",
    });
  });

  app.addHook('onRequest', async (req, reply) => {
    (req as { t0?: bigint }).t0 = process.hrtime.bigint();
    if (!opts.token) return;
    const p = req.url.split('?')[0];
    if (p === '/healthz' || p === '/healthz/') return;
    // The E2B API checks its own credentials (X-API-KEY, a sandbox's access token): e2b/index.ts.
    if (req.routeOptions.url && e2bRouteUrls.has(req.routeOptions.url)) return;
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
  await registerE2b(app, ctl, { token: opts.token, templates: opts.e2bTemplates ?? new Map() });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
