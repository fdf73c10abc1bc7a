/**
 * forkd guest agent: runs as a child of PID 1 in every guest, serves the agent API (HTTP/2) over the
 * virtio-serial port. Started at parent boot, so its state (and the warm Python interpreter it owns) is
 * part of the snapshot and continues in every child.
 */
import fs from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import { AGENT_API_VERSION } from '../../protocol/agent-api.js';
import type {
  EvalRequest,
  ExecEvent,
  ExecRequest,
  Identity,
  PingResponse,
} from '../../protocol/agent-api.js';
import { PortTransport, findPortDevice } from './port.js';
import { runExec, validateExec } from './exec.js';
import { procRoute } from './procs-routes.js';
import { lookupUser } from './users.js';
import { watchRoute } from './watch-route.js';
import { tcpRoute } from './tcp.js';
import { mountVolume, unmountVolume, validateMount } from './volumes.js';
import { PythonWorker } from './python.js';
import { evalJs, resetRandomPools } from './jseval.js';
import { applyIdentity, currentSandboxId, validateIdentity } from './identity.js';
import {
  checkPath,
  listRoute,
  mkdirRoute,
  moveRoute,
  readFileRoute,
  removeRoute,
  statRoute,
  writeFileRoute,
} from './files.js';

const PORT_NAME = 'org.forkd.agent';
const MAX_BODY = 64 << 20;

function log(msg: string): void {
  process.stderr.write(`forkd-agent: ${msg}\n`);
}

type Stream = http2.ServerHttp2Stream;

function sendJson(stream: Stream, status: number, body: unknown): void {
  if (stream.destroyed || stream.closed) return;
  try {
    stream.respond({ ':status': status, 'content-type': 'application/json' });
    stream.end(JSON.stringify(body));
  } catch {
    /* the session went away */
  }
}

function readBody(stream: Stream): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error(`request body larger than ${MAX_BODY} bytes`));
        stream.close(http2.constants.NGHTTP2_CANCEL);
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (!text) return resolve({});
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(new Error('request body is not valid JSON'));
      }
    });
    stream.on('error', reject);
  });
}

async function handle(stream: Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
  const method = headers[':method'];
  const path = String(headers[':path'] ?? '');
  const route = `${method} ${path.split('?')[0]}`;
  const query = new URLSearchParams(path.includes('?') ? path.slice(path.indexOf('?') + 1) : '');
  if (
    route === 'GET /v1/files' ||
    route === 'PUT /v1/files' ||
    route === 'GET /v1/files/list' ||
    route === 'GET /v1/files/stat'
  ) {
    const p = checkPath(query.get('path'));
    if (!p) return sendJson(stream, 400, { error: '"path" must be an absolute path' });
    if (route === 'GET /v1/files') return readFileRoute(stream, p, sendJson);
    if (route === 'GET /v1/files/stat') return statRoute(stream, p, sendJson);
    if (route === 'GET /v1/files/list') {
      const depth = Number(query.get('depth') ?? '1');
      if (!Number.isInteger(depth) || depth < 1 || depth > 64)
        return sendJson(stream, 400, { error: '"depth" must be 1..64' });
      return listRoute(stream, p, depth, sendJson);
    }
    const modeStr = query.get('mode');
    const mode = modeStr === null ? undefined : Number.parseInt(modeStr, 8);
    if (mode !== undefined && !(mode >= 0 && mode <= 0o7777))
      return sendJson(stream, 400, { error: '"mode" must be octal, e.g. 644' });
    const owner = query.has('user') ? lookupUser(query.get('user')!) : undefined;
    if (query.has('user') && !owner)
      return sendJson(stream, 401, { error: `no user ${query.get('user')} in this guest` });
    return writeFileRoute(stream, p, mode, owner, sendJson);
  }
  // Raw bytes both ways: its body is the tunnel, not JSON.
  if (route === 'POST /v1/tcp') return tcpRoute(stream, query, sendJson);
  let body: Record<string, unknown> = {};
  if (method === 'POST') {
    try {
      body = (await readBody(stream)) as Record<string, unknown>;
    } catch (e) {
      return sendJson(stream, 400, { error: (e as Error).message });
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      return sendJson(stream, 400, { error: 'request body must be a JSON object' });
  }
  if (await procRoute(route, stream, body, sendJson)) return;
  if (route === 'POST /v1/watch') return watchRoute(stream, body, sendJson);
  switch (route) {
    case 'GET /v1/ping': {
      const res: PingResponse = {
        ok: true,
        agent_version: AGENT_API_VERSION,
        pid: process.pid,
        uptime_s: Math.round(os.uptime() * 100) / 100,
        hostname: os.hostname(),
        sandbox_id: currentSandboxId(),
        node_version: process.version,
        python: python.info,
        epoch: transport.currentEpoch,
      };
      return sendJson(stream, 200, res);
    }
    case 'POST /v1/identity': {
      const err = validateIdentity(body as Partial<Identity>);
      if (err) return sendJson(stream, 400, { error: err });
      try {
        const res = await applyIdentity(body as unknown as Identity, python);
        return sendJson(stream, 200, res);
      } catch (e) {
        return sendJson(stream, 500, { error: `identity: ${(e as Error).message}` });
      }
    }
    case 'POST /v1/volumes/mount': {
      const err = validateMount(body);
      if (err) return sendJson(stream, 400, { error: err });
      try {
        return sendJson(
          stream,
          200,
          await mountVolume(String(body.serial), String(body.path), Boolean(body.readonly)),
        );
      } catch (e) {
        return sendJson(stream, 500, { error: (e as Error).message });
      }
    }
    case 'POST /v1/volumes/unmount': {
      if (typeof body.path !== 'string' || !body.path.startsWith('/'))
        return sendJson(stream, 400, { error: '"path" must be an absolute path' });
      try {
        await unmountVolume(body.path);
        return sendJson(stream, 200, { unmounted: body.path });
      } catch (e) {
        return sendJson(stream, 500, { error: (e as Error).message });
      }
    }
    case 'POST /v1/settle': {
      // The parent, just before its snapshot: garbage collected now is never collected (nor its code
      // translated) again in each child. `gc` exists when node runs with --expose-gc (the guest init).
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      let py: Record<string, unknown> | null = null;
      if (python.info.ready) {
        py = await python.request({ op: 'settle' });
        delete py.id;
      }
      return sendJson(stream, 200, {
        js_gc: Boolean(gc),
        heap_used: process.memoryUsage().heapUsed,
        python: py,
      });
    }
    case 'POST /v1/exec': {
      const req = body as ExecRequest;
      const err = validateExec(req);
      if (err) return sendJson(stream, 400, { error: err });
      const abort = new AbortController();
      stream.on('close', () => abort.abort());
      stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
      let ended = false;
      const emit = (ev: ExecEvent) => {
        if (!ended && !stream.destroyed && !stream.closed) stream.write(JSON.stringify(ev) + '\n');
      };
      await runExec(req, emit, abort.signal);
      ended = true;
      if (!stream.destroyed && !stream.closed) stream.end();
      return;
    }
    case 'POST /v1/eval': {
      const req = body as unknown as EvalRequest;
      if (typeof req.code !== 'string') return sendJson(stream, 400, { error: '"code" must be a string' });
      const lang = req.language ?? 'python';
      const context = typeof req.context === 'string' && req.context ? req.context : 'default';
      const timeout = typeof req.timeout_ms === 'number' && req.timeout_ms > 0 ? req.timeout_ms : 0;
      if (lang === 'js') return sendJson(stream, 200, await evalJs(req.code, context, timeout));
      if (lang !== 'python') return sendJson(stream, 400, { error: '"language" must be "python" or "js"' });
      try {
        const r = await python.request(
          {
            op: 'eval',
            code: req.code,
            context,
            ...(req.rich ? { rich: true } : {}),
            ...(typeof req.cwd === 'string' ? { cwd: req.cwd } : {}),
            ...(req.env && typeof req.env === 'object' ? { env: req.env } : {}),
          },
          timeout,
        );
        delete r.id;
        return sendJson(stream, 200, r);
      } catch (e) {
        // No python3 in this guest is the caller's choice of language, not a passing failure.
        return sendJson(stream, python.absent ? 400 : 503, { error: `python: ${(e as Error).message}` });
      }
    }
    case 'POST /v1/files/remove':
    case 'POST /v1/files/mkdir':
    case 'POST /v1/files/move': {
      const p = checkPath(route === 'POST /v1/files/move' ? body.source : body.path);
      if (!p)
        return sendJson(stream, 400, {
          error: `"${route === 'POST /v1/files/move' ? 'source' : 'path'}" must be an absolute path`,
        });
      const owner = typeof body.user === 'string' ? lookupUser(body.user) : undefined;
      if (typeof body.user === 'string' && !owner)
        return sendJson(stream, 401, { error: `no user ${body.user} in this guest` });
      if (route === 'POST /v1/files/mkdir') return mkdirRoute(stream, p, owner, sendJson);
      if (route === 'POST /v1/files/move') {
        const to = checkPath(body.destination);
        if (!to) return sendJson(stream, 400, { error: '"destination" must be an absolute path' });
        return moveRoute(stream, p, to, owner, sendJson);
      }
      return removeRoute(stream, p, body.recursive === true, sendJson);
    }
    default:
      return sendJson(stream, 404, { error: `no such route: ${route}` });
  }
}

const server = http2.createServer({ maxSessionMemory: 64 });
server.on('stream', (stream, headers) => {
  stream.on('error', () => {});
  handle(stream, headers).catch((e) => {
    log(`handler error: ${(e as Error).stack}`);
    sendJson(stream, 500, { error: (e as Error).message });
  });
});
server.on('sessionError', () => {});
let currentSession: http2.ServerHttp2Session | undefined;
server.on('session', (s: http2.ServerHttp2Session) => {
  currentSession = s;
  s.on('error', () => {});
});

const dev = findPortDevice(PORT_NAME);
if (!dev) {
  log(`virtio-serial port ${PORT_NAME} not found; is virtio_console loaded?`);
  process.exit(2);
}
const fd = fs.openSync(dev, 'r+');
const transport = new PortTransport(fd);
const python = new PythonWorker(log, fd);
transport.on('warn', (m: string) => log(m));
transport.on('session', (session, epoch: number) => {
  // A new host connection: drop the old HTTP/2 session (streams, HPACK state, windows) entirely.
  currentSession?.destroy();
  // A child's first connection can come after its identity went straight to the Python worker: never
  // serve it bytes pooled before the snapshot (they would be the same in every child).
  resetRandomPools();
  currentSession = undefined;
  server.emit('connection', session);
  if (epoch <= 3 || epoch % 100 === 0) log(`host session ${epoch}`);
});
transport.start();
python.start();
log(`listening on ${dev}`);
process.on('uncaughtException', (e) => log(`uncaught: ${e.stack}`));
