import { scaledMs } from '../util/host-speed.js';
import http2 from 'node:http2';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { connectResynced } from './resync-socket.js';
import { identityFor } from './identity.js';
import { emptyExecResult } from '../protocol/agent-api.js';
import type { z } from 'zod';
import {
  AgentErrorBodySchema,
  EvalResultSchema,
  ExecEventSchema,
  FileEntrySchema,
  FileListSchema,
  firstIssue,
  IdentityResultSchema,
  SettleResultSchema,
  PingSchema,
  ProcEventSchema,
  ProcListSchema,
  EmptySchema,
  WatchEventSchema,
  RemovedSchema,
  MountedSchema,
  UnmountedSchema,
} from './replies.js';
import { NdjsonStream } from './ndjson-stream.js';
import { AgentWire } from './wire.js';
import { AGENT_LIMITS, AgentError } from './errors.js';
import type {
  EvalRequest,
  EvalResult,
  ExecEvent,
  ExecRequest,
  ExecResult,
  FileEntry,
  Identity,
  IdentityResult,
  SettleResult,
  PingResponse,
  ProcEvent,
  ProcInfo,
  ProcSelector,
  WatchEvent,
  ProcStartRequest,
} from '../protocol/agent-api.js';

export { AGENT_LIMITS, AgentError } from './errors.js';

function agentHttpError(status: number, text: string): AgentError {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return new AgentError(status, `HTTP ${status}`);
  }
  const b = AgentErrorBodySchema.safeParse(body);
  if (!b.success) return new AgentError(status, `HTTP ${status}`);
  return new AgentError(status, b.data.error.slice(0, AGENT_LIMITS.errorChars), b.data.code?.slice(0, 64));
}

/** Validate a guest reply against its schema; a mismatch names the route and the first bad field. */
function checked<T>(schema: z.ZodType, value: unknown, what: string, status: number): T {
  const r = schema.safeParse(value);
  if (!r.success)
    throw new AgentError(status, `agent ${what}: malformed reply (${firstIssue(r.error)})`, 'EPROTO');
  return r.data as T;
}

/**
 * The status and body text of one HTTP/2 reply, at most `limit` bytes; transport errors become
 * AgentErrors naming `what`.
 */
function readReply(
  req: http2.ClientHttp2Stream,
  what: string,
  limit = AGENT_LIMITS.replyBytes,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('response', (h) => (status = Number(h[':status']) || 0));
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > limit) {
        req.close(http2.constants.NGHTTP2_CANCEL);
        reject(new AgentError(0, `agent ${what}: reply larger than ${limit} bytes`, 'E2BIG'));
        return;
      }
      chunks.push(d);
    });
    req.on('end', () => resolve({ status, text: Buffer.concat(chunks).toString('utf8') }));
    req.on('error', (e) => reject(new AgentError(0, `agent ${what}: ${e.message}`)));
  });
}

/** Host-side client of the guest agent: HTTP/2 over the virtio-serial port's unix socket. */
export class AgentClient {
  /** Why this session can no longer be used; set once, on the first sign of trouble. */
  private lost: string | undefined;
  /** Rejecters of requests in flight, failed at once when the session is lost. */
  private readonly inflight = new Set<(e: AgentError) => void>();
  private keepalive: NodeJS.Timeout | undefined;

  private constructor(
    private readonly session: http2.ClientHttp2Session,
    private readonly sock: net.Socket,
    wire: AgentWire,
  ) {
    // A restarted agent announces itself, and bytes that are not the agent protocol make our HTTP/2
    // stack give up on the session (wire.ts sees both): everything in flight fails now, naming the
    // cause, instead of waiting for a timeout, and the next request resyncs.
    wire.on('lost', (why: string) => this.markLost(why));
    session.on('error', (e) => this.markLost(`the agent session failed: ${e.message}`));
    session.on('goaway', () => this.markLost('the guest agent closed its session'));
    session.on('close', () => this.markLost('the agent session closed'));
    sock.on('close', () => this.markLost('the agent socket closed (QEMU exited?)'));
  }

  private markLost(why: string): void {
    if (this.lost) return;
    this.lost = why;
    for (const fail of [...this.inflight]) fail(new AgentError(0, why, 'ECONNRESET'));
    this.inflight.clear();
    clearInterval(this.keepalive);
    if (!this.session.destroyed) this.session.destroy();
    this.sock.destroy();
  }

  /**
   * While requests are in flight, PING the agent now and then. Its HTTP/2 stack answers by itself, even
   * while a command runs for hours; a guest that stopped answering (frozen, or whatever holds the port
   * sent half a frame) fails the requests instead of holding them for ever.
   */
  private watchLiveness(): void {
    if (this.keepalive) return;
    const pingTimeoutMs = scaledMs(AGENT_LIMITS.pingTimeoutMs);
    this.keepalive = setInterval(() => {
      const timer = setTimeout(
        () =>
          this.markLost(
            `the guest agent stopped answering (no reply to a ping in ${pingTimeoutMs / 1000} s)`,
          ),
        pingTimeoutMs,
      );
      try {
        this.session.ping(() => clearTimeout(timer));
      } catch {
        clearTimeout(timer);
      }
    }, scaledMs(AGENT_LIMITS.pingIntervalMs));
    this.keepalive.unref();
  }

  /**
   * Run one request so that losing the session fails it at once; a request that runs past its own
   * timeout also drops the session (the guest stopped answering: the next request must resync).
   */
  private tracked<T>(
    what: string,
    timeoutMs: number | undefined,
    start: (resolve: (v: T) => void, reject: (e: Error) => void) => http2.ClientHttp2Stream | undefined,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.lost) {
        reject(new AgentError(0, `agent ${what}: ${this.lost}`, 'ECONNRESET'));
        return;
      }
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        settled = true;
        clearTimeout(timer);
        this.inflight.delete(onLost);
        if (!this.inflight.size) {
          clearInterval(this.keepalive);
          this.keepalive = undefined;
        }
      };
      const onLost = (e: AgentError) => {
        if (settled) return;
        done();
        reject(new AgentError(0, `agent ${what}: ${e.message}`, e.code));
      };
      this.inflight.add(onLost);
      this.watchLiveness();
      let stream: http2.ClientHttp2Stream | undefined;
      try {
        stream = start(
          (v) => {
            if (settled) return;
            done();
            resolve(v);
          },
          (e) => {
            if (settled) return;
            done();
            reject(e);
          },
        );
      } catch (e) {
        done();
        reject(new AgentError(0, `agent session closed: ${(e as Error).message}`, 'ECONNRESET'));
        return;
      }
      // Timeouts are reference-host values, stretched to this host's measured speed (util/host-speed).
      if (timeoutMs !== undefined) timeoutMs = scaledMs(timeoutMs);
      if (timeoutMs !== undefined)
        timer = setTimeout(() => {
          if (settled) return;
          done();
          stream?.close(http2.constants.NGHTTP2_CANCEL);
          reject(new AgentError(0, `agent ${what}: no answer within ${timeoutMs} ms`, 'ETIMEDOUT'));
          this.markLost(`a request got no answer within ${timeoutMs} ms`);
        }, timeoutMs);
    });
  }

  static async connect(
    socketPath: string,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<AgentClient> {
    const { sock } = await connectResynced(socketPath, opts);
    const wire = new AgentWire(sock);
    const session = http2.connect('http://forkd-agent', { createConnection: () => wire });
    return new AgentClient(session, sock, wire);
  }

  private request(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    timeoutMs = 60_000,
  ): Promise<{ status: number; text: string }> {
    return this.tracked(`${method} ${path.split('?')[0]}`, timeoutMs, (resolve, reject) => {
      const req = this.session.request({
        ':method': method,
        ':path': path,
        'content-type': 'application/json',
      });
      readReply(req, `${method} ${path.split('?')[0]}`).then(resolve, reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
      return req;
    });
  }

  private async json<T>(
    schema: z.ZodType,
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    timeoutMs?: number,
  ): Promise<T> {
    const r = await this.request(method, path, body, timeoutMs);
    const what = path.split('?')[0]!;
    if (r.status >= 400) throw agentHttpError(r.status, r.text);
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.text);
    } catch {
      throw new AgentError(r.status, `agent ${what}: non-JSON answer (HTTP ${r.status})`, 'EPROTO');
    }
    if (r.status !== 200)
      throw new AgentError(r.status, `agent ${what}: unexpected HTTP ${r.status}`, 'EPROTO');
    return checked<T>(schema, parsed, what, r.status);
  }

  ping(timeoutMs = 10_000): Promise<PingResponse> {
    return this.json(PingSchema, 'GET', '/v1/ping', undefined, timeoutMs);
  }

  identity(id: Identity): Promise<IdentityResult> {
    return this.json(IdentityResultSchema, 'POST', '/v1/identity', id, 30_000);
  }

  /** Tell a freshly restored child who it is: its id as hostname, the host's clock, fresh entropy. */
  announce(sandboxId: string): Promise<IdentityResult> {
    return this.identity(identityFor(sandboxId));
  }

  /** The parent, just before its snapshot: collect garbage and freeze the Python heap (see prime.ts). */
  settle(): Promise<SettleResult> {
    return this.json(SettleResultSchema, 'POST', '/v1/settle', {}, 60_000);
  }

  eval(req: EvalRequest): Promise<EvalResult> {
    const t = req.timeout_ms && req.timeout_ms > 0 ? req.timeout_ms + 10_000 : 24 * 3600_000;
    return this.json(EvalResultSchema, 'POST', '/v1/eval', req, t);
  }

  /**
   * Run a command; `onEvent` sees output as it streams. Resolves with the collected result (stdout and
   * stderr each capped at AGENT_LIMITS.execOutputChars, `truncated` set past it). Every line the guest
   * sends is parsed and validated; a bad one fails this exec, nothing else.
   */
  exec(req: ExecRequest, onEvent?: (ev: ExecEvent) => void): Promise<ExecResult> {
    // The guest enforces timeout_ms; this guard only catches a guest that stops answering.
    const guardMs = req.timeout_ms && req.timeout_ms > 0 ? req.timeout_ms + 30_000 : undefined;
    return this.tracked<ExecResult>('exec', guardMs, (resolve, reject) => {
      const req2 = this.session.request({
        ':method': 'POST',
        ':path': '/v1/exec',
        'content-type': 'application/json',
      });
      const res: ExecResult = emptyExecResult();
      let status = 0;
      let buf = '';
      let failure: string | undefined;
      let exited = false;
      let broken: AgentError | undefined;
      const fail = (e: AgentError) => {
        if (broken) return;
        broken = e;
        req2.close(http2.constants.NGHTTP2_CANCEL);
        reject(e);
      };
      const collect = (which: 'stdout' | 'stderr', data: string) => {
        const room = AGENT_LIMITS.execOutputChars - res[which].length;
        if (data.length > room) res.truncated = true;
        if (room > 0) res[which] += data.length > room ? data.slice(0, room) : data;
      };
      // Lines are parsed once the status is known: 'response' is emitted on a later tick than the
      // first data can arrive, and an error reply's body is JSON, not NDJSON.
      const drain = () => {
        if (broken || status === 0) return;
        if (status >= 400) {
          if (buf.length > AGENT_LIMITS.errorChars * 4)
            fail(new AgentError(status, 'agent exec: oversized error reply', 'E2BIG'));
          return;
        }
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let raw: unknown;
          try {
            raw = JSON.parse(line);
          } catch {
            return fail(new AgentError(0, 'agent exec: the guest sent a line that is not JSON', 'EPROTO'));
          }
          const parsed = ExecEventSchema.safeParse(raw);
          if (!parsed.success)
            return fail(
              new AgentError(0, `agent exec: malformed event (${firstIssue(parsed.error)})`, 'EPROTO'),
            );
          const ev = parsed.data as ExecEvent;
          onEvent?.(ev);
          if (ev.type === 'stdout' || ev.type === 'stderr') collect(ev.type, ev.data);
          else if (ev.type === 'error') failure = ev.error.slice(0, AGENT_LIMITS.errorChars);
          else if (ev.type === 'exit') {
            exited = true;
            Object.assign(res, {
              exit_code: ev.exit_code,
              signal: ev.signal,
              timed_out: ev.timed_out,
              duration_ms: ev.duration_ms,
            });
          }
        }
      };
      req2.setEncoding('utf8');
      req2.on('response', (h) => {
        status = Number(h[':status']) || 500;
        drain();
      });
      req2.on('data', (d: string) => {
        if (broken) return;
        buf += d;
        drain();
        if (buf.length > AGENT_LIMITS.execLineBytes)
          fail(
            new AgentError(0, `agent exec: a line longer than ${AGENT_LIMITS.execLineBytes} bytes`, 'E2BIG'),
          );
      });
      req2.on('end', () => {
        drain();
        if (broken) return;
        if (status >= 400) reject(agentHttpError(status, buf));
        else if (failure) reject(new AgentError(500, failure));
        else if (!exited) reject(new AgentError(0, 'exec stream ended without an exit status'));
        else resolve(res);
      });
      req2.on('error', (e) => reject(new AgentError(0, `agent exec: ${e.message}`)));
      req2.end(JSON.stringify(req));
      return req2;
    });
  }

  /** Stream a guest file. Resolves once the guest answered 200, with the body stream. */
  readFile(filePath: string): Promise<{ stream: Readable; size: number | undefined }> {
    return this.tracked('read file', 60_000, (resolve, reject) => {
      const req = this.session.request({
        ':method': 'GET',
        ':path': `/v1/files?path=${encodeURIComponent(filePath)}`,
      });
      req.on('response', (h) => {
        const status = Number(h[':status']);
        if (status === 200) {
          const len = Number(h['content-length']);
          resolve({ stream: req, size: Number.isSafeInteger(len) && len >= 0 ? len : undefined });
          return;
        }
        readReply(req, `read ${filePath}`, AGENT_LIMITS.errorChars * 4).then(
          ({ text }) => reject(agentHttpError(status, text)),
          reject,
        );
      });
      req.on('error', (e) => reject(new AgentError(0, `agent read ${filePath}: ${e.message}`)));
      req.end();
      return req;
    });
  }

  /** Stream `body` into a guest file (written to a temp file, renamed into place). */
  writeFile(
    filePath: string,
    body: Readable | Buffer | string,
    mode?: number,
    /** A guest account to own the file (and the directories made for it); default root. */
    user?: string,
  ): Promise<FileEntry> {
    return this.tracked<FileEntry>('write file', undefined, (resolve, reject) => {
      const q =
        `path=${encodeURIComponent(filePath)}${mode === undefined ? '' : `&mode=${mode.toString(8)}`}` +
        (user === undefined ? '' : `&user=${encodeURIComponent(user)}`);
      const req = this.session.request({ ':method': 'PUT', ':path': `/v1/files?${q}` });
      readReply(req, `write ${filePath}`, AGENT_LIMITS.errorChars * 4).then(({ status, text }) => {
        if (status !== 200) return reject(agentHttpError(status, text));
        try {
          resolve(checked<FileEntry>(FileEntrySchema, JSON.parse(text), 'write file', status));
        } catch (e) {
          reject(
            e instanceof AgentError
              ? e
              : new AgentError(status, 'agent write file: non-JSON answer', 'EPROTO'),
          );
        }
      }, reject);
      if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
      else {
        body.on('error', (e) => {
          req.close(http2.constants.NGHTTP2_CANCEL);
          reject(e);
        });
        body.pipe(req);
      }
      return req;
    });
  }

  listFiles(dir: string, depth = 1): Promise<{ entries: FileEntry[] }> {
    return this.json(FileListSchema, 'GET', `/v1/files/list?path=${encodeURIComponent(dir)}&depth=${depth}`);
  }

  statFile(filePath: string): Promise<FileEntry> {
    return this.json(FileEntrySchema, 'GET', `/v1/files/stat?path=${encodeURIComponent(filePath)}`);
  }

  /** Mount the volume whose block device has `serial` at `dir` (snapshot/volumes.ts). */
  mountVolume(serial: string, dir: string, readonly: boolean): Promise<{ device: string }> {
    return this.json(MountedSchema, 'POST', '/v1/volumes/mount', { serial, path: dir, readonly });
  }

  unmountVolume(dir: string): Promise<{ unmounted: string }> {
    return this.json(UnmountedSchema, 'POST', '/v1/volumes/unmount', { path: dir });
  }

  removeFile(filePath: string, recursive = false): Promise<{ removed: string }> {
    return this.json(RemovedSchema, 'POST', '/v1/files/remove', { path: filePath, recursive });
  }

  /** mkdir -p; `created` in the answer is false when it existed. */
  makeDir(dir: string, user?: string): Promise<FileEntry> {
    return this.json(FileEntrySchema, 'POST', '/v1/files/mkdir', { path: dir, ...(user ? { user } : {}) });
  }

  /** rename(2) in the guest; answers the destination's entry. */
  moveFile(source: string, destination: string, user?: string): Promise<FileEntry> {
    return this.json(FileEntrySchema, 'POST', '/v1/files/move', {
      source,
      destination,
      ...(user ? { user } : {}),
    });
  }

  /**
   * Start a long-lived guest process (POST /v1/procs) or attach to one (POST /v1/procs/attach).
   * Resolves once the agent answered: with its events (the first is `start`), or rejects with the
   * agent's error (404 for an unknown process). The process outlives the returned stream.
   */
  procEvents(
    route: 'start' | 'attach',
    body: ProcStartRequest | ProcSelector,
  ): Promise<NdjsonStream<ProcEvent>> {
    const path = route === 'start' ? '/v1/procs' : '/v1/procs/attach';
    return this.eventStream(path, body, ProcEventSchema, `process ${route}`);
  }

  /**
   * A TCP connection to 127.0.0.1:`port` in the guest, as a duplex stream (POST /v1/tcp). Rejects with
   * the agent's 502 when nothing listens there.
   */
  openTcp(port: number): Promise<http2.ClientHttp2Stream> {
    return this.tracked<http2.ClientHttp2Stream>('tcp tunnel', 30_000, (resolve, reject) => {
      const req = this.session.request({ ':method': 'POST', ':path': `/v1/tcp?port=${port}` });
      req.on('response', (h) => {
        const status = Number(h[':status']) || 500;
        if (status === 200) return resolve(req);
        readReply(req, 'tcp tunnel', AGENT_LIMITS.errorChars * 4).then(
          ({ text }) => reject(agentHttpError(status, text)),
          reject,
        );
      });
      req.on('error', (e) => reject(new AgentError(0, `agent tcp tunnel: ${e.message}`)));
      return req;
    });
  }

  /** Changes under a guest directory (POST /v1/watch): a `start`, then one event per change. */
  watchDir(dir: string, recursive: boolean): Promise<NdjsonStream<WatchEvent>> {
    return this.eventStream('/v1/watch', { path: dir, recursive }, WatchEventSchema, 'watch');
  }

  /** POST an NDJSON stream request; resolves with its events once the agent answered 200. */
  private eventStream<T>(
    path: string,
    body: unknown,
    schema: z.ZodType,
    what: string,
  ): Promise<NdjsonStream<T>> {
    return this.tracked<NdjsonStream<T>>(what, 60_000, (resolve, reject) => {
      const req = this.session.request({
        ':method': 'POST',
        ':path': path,
        'content-type': 'application/json',
      });
      req.on('response', (h) => {
        const status = Number(h[':status']) || 500;
        if (status === 200) return resolve(new NdjsonStream<T>(req, schema, what));
        readReply(req, what, AGENT_LIMITS.errorChars * 4).then(
          ({ text }) => reject(agentHttpError(status, text)),
          reject,
        );
      });
      req.on('error', (e) => reject(new AgentError(0, `agent ${what}: ${e.message}`)));
      req.end(JSON.stringify(body));
      return req;
    });
  }

  listProcs(): Promise<{ processes: ProcInfo[] }> {
    return this.json(ProcListSchema, 'GET', '/v1/procs');
  }

  /** Bytes to a process's stdin (it must have been started with `stdin: true`). */
  procInput(sel: ProcSelector, data: Buffer): Promise<Record<string, never>> {
    return this.json(EmptySchema, 'POST', '/v1/procs/input', { ...sel, data: data.toString('base64') });
  }

  /** A terminal's new size (a process started with `pty`). */
  procResize(sel: ProcSelector, cols: number, rows: number): Promise<Record<string, never>> {
    return this.json(EmptySchema, 'POST', '/v1/procs/resize', { ...sel, cols, rows });
  }

  procCloseStdin(sel: ProcSelector): Promise<Record<string, never>> {
    return this.json(EmptySchema, 'POST', '/v1/procs/close-stdin', sel);
  }

  /** A signal to the process's group. */
  procSignal(sel: ProcSelector, signal: string): Promise<Record<string, never>> {
    return this.json(EmptySchema, 'POST', '/v1/procs/signal', { ...sel, signal });
  }

  /** Whether the HTTP/2 session to the agent is still usable. */
  get usable(): boolean {
    return !this.lost && !this.session.closed && !this.session.destroyed && !this.sock.destroyed;
  }

  /** Why the session became unusable, if it did. */
  get lostReason(): string | undefined {
    return this.lost;
  }

  close(): void {
    this.markLost('closed by forkd');
  }
}
