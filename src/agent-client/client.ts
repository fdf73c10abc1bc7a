import http2 from 'node:http2';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { findAck, helloFrame, NONCE_BYTES } from '../protocol/resync.js';
import { emptyExecResult } from '../protocol/agent-api.js';
import type {
  EvalRequest,
  EvalResult,
  ExecEvent,
  ExecRequest,
  ExecResult,
  FileEntry,
  Identity,
  IdentityResult,
  PingResponse,
} from '../protocol/agent-api.js';

export class AgentError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** errno-style code from the guest (ENOENT, EISDIR, ...) where there is one */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}

function agentHttpError(status: number, text: string): AgentError {
  try {
    const b = JSON.parse(text) as { error?: string; code?: string };
    return new AgentError(status, b.error ?? `HTTP ${status}`, b.code);
  } catch {
    return new AgentError(status, `HTTP ${status}`);
  }
}

/** Open the unix socket QEMU serves for the agent port, retrying until it exists. */
async function openSocket(path: string, deadline: number, signal?: AbortSignal): Promise<net.Socket> {
  for (;;) {
    if (signal?.aborted) throw new Error('connect aborted');
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(path);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/**
 * Send HELLO+nonce and discard input until the guest's ACK+nonce. Resolves with the socket positioned
 * at the first byte of the new session. Resends the HELLO periodically: a guest that is still booting
 * does not read the port yet, and bytes written before it opened the port may be lost.
 */
async function resync(sock: net.Socket, deadline: number, signal?: AbortSignal): Promise<void> {
  const nonce = randomBytes(NONCE_BYTES);
  const hello = helloFrame(nonce);
  let acc = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    const resend = setInterval(() => sock.write(hello), 1000);
    const timer = setInterval(() => {
      if (signal?.aborted) finish(new Error('connect aborted'));
      else if (Date.now() > deadline)
        finish(
          new Error(
            "the guest agent did not answer the resync handshake (is the guest still booting, or does another client hold this VM's agent socket? QEMU serves one at a time)",
          ),
        );
    }, 50);
    const onData = (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      const rest = findAck(acc, nonce);
      if (rest === undefined) {
        if (acc.length > 1 << 20) acc = acc.subarray(acc.length - 4096); // stale bytes from an old session
        return;
      }
      // Stop the flow before detaching: in flowing mode, bytes unshifted (or arriving) with no 'data'
      // listener are emitted to nobody and lost, and they are the start of the guest's HTTP/2 session.
      sock.pause();
      finish();
      if (rest.length) sock.unshift(rest);
    };
    const onClose = () => finish(new Error('agent socket closed during the resync handshake'));
    const finish = (err?: Error) => {
      clearInterval(resend);
      clearInterval(timer);
      sock.off('data', onData);
      sock.off('close', onClose);
      sock.off('error', onClose);
      if (err) reject(err);
      else resolve();
    };
    sock.on('data', onData);
    sock.on('close', onClose);
    sock.on('error', onClose);
    sock.write(hello);
  });
  sock.pause();
}

/** The status and body text of one HTTP/2 reply; transport errors become AgentErrors naming `what`. */
function readReply(req: http2.ClientHttp2Stream, what: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    let text = '';
    req.setEncoding('utf8');
    req.on('response', (h) => (status = Number(h[':status'])));
    req.on('data', (d: string) => (text += d));
    req.on('end', () => resolve({ status, text }));
    req.on('error', (e) => reject(new AgentError(0, `agent ${what}: ${e.message}`)));
  });
}

/** Host-side client of the guest agent: HTTP/2 over the virtio-serial port's unix socket. */
export class AgentClient {
  private constructor(
    private readonly session: http2.ClientHttp2Session,
    private readonly sock: net.Socket,
  ) {}

  static async connect(
    socketPath: string,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<AgentClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    const sock = await openSocket(socketPath, deadline, opts.signal);
    try {
      await resync(sock, deadline, opts.signal);
    } catch (e) {
      sock.destroy();
      throw new ForkdError('agent_failed', (e as Error).message);
    }
    const session = http2.connect('http://forkd-agent', { createConnection: () => sock });
    session.on('error', () => {});
    return new AgentClient(session, sock);
  }

  private request(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    timeoutMs = 60_000,
  ): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      let req: http2.ClientHttp2Stream;
      try {
        req = this.session.request({ ':method': method, ':path': path, 'content-type': 'application/json' });
      } catch (e) {
        reject(new AgentError(0, `agent session closed: ${(e as Error).message}`));
        return;
      }
      const timer = setTimeout(() => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        reject(new AgentError(0, `agent ${method} ${path}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      readReply(req, `${method} ${path}`)
        .then(resolve, reject)
        .finally(() => clearTimeout(timer));
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  private async json<T>(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    timeoutMs?: number,
  ): Promise<T> {
    const r = await this.request(method, path, body, timeoutMs);
    let parsed: unknown;
    try {
      parsed = JSON.parse(r.text);
    } catch {
      throw new AgentError(r.status, `agent ${path}: non-JSON answer (HTTP ${r.status})`);
    }
    if (r.status >= 400) throw agentHttpError(r.status, r.text);
    return parsed as T;
  }

  ping(timeoutMs = 10_000): Promise<PingResponse> {
    return this.json('GET', '/v1/ping', undefined, timeoutMs);
  }

  identity(id: Identity): Promise<IdentityResult> {
    return this.json('POST', '/v1/identity', id, 30_000);
  }

  /** Tell a freshly restored child who it is: its id as hostname, the host's clock, fresh entropy. */
  announce(sandboxId: string): Promise<IdentityResult> {
    return this.identity({
      sandbox_id: sandboxId,
      hostname: sandboxId,
      time_unix_ns: String(BigInt(Date.now()) * 1_000_000n),
      seed_hex: randomBytes(64).toString('hex'),
    });
  }

  eval(req: EvalRequest): Promise<EvalResult> {
    const t = req.timeout_ms && req.timeout_ms > 0 ? req.timeout_ms + 10_000 : 24 * 3600_000;
    return this.json('POST', '/v1/eval', req, t);
  }

  /** Run a command; `onEvent` sees output as it streams. Resolves with the collected result. */
  exec(req: ExecRequest, onEvent?: (ev: ExecEvent) => void): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
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
      req2.setEncoding('utf8');
      req2.on('response', (h) => (status = Number(h[':status'])));
      req2.on('data', (d: string) => {
        buf += d;
        if (status >= 400) return;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line) as ExecEvent;
          onEvent?.(ev);
          if (ev.type === 'stdout') res.stdout += ev.data;
          else if (ev.type === 'stderr') res.stderr += ev.data;
          else if (ev.type === 'error') failure = ev.error;
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
      });
      req2.on('end', () => {
        if (status >= 400) {
          let msg = `HTTP ${status}`;
          try {
            msg = (JSON.parse(buf) as { error: string }).error;
          } catch {
            /* keep status */
          }
          reject(new AgentError(status, msg));
        } else if (failure) reject(new AgentError(500, failure));
        else if (!exited) reject(new AgentError(0, 'exec stream ended without an exit status'));
        else resolve(res);
      });
      req2.on('error', (e) => reject(new AgentError(0, `agent exec: ${e.message}`)));
      // The guest enforces timeout_ms; this only guards against a guest that stops answering.
      if (req.timeout_ms && req.timeout_ms > 0) {
        const guard = setTimeout(() => {
          req2.close(http2.constants.NGHTTP2_CANCEL);
          reject(new AgentError(0, `agent exec: no exit status ${req.timeout_ms! + 30_000} ms after start`));
        }, req.timeout_ms + 30_000);
        req2.on('close', () => clearTimeout(guard));
      }
      req2.end(JSON.stringify(req));
    });
  }

  /** Stream a guest file. Resolves once the guest answered 200, with the body stream. */
  readFile(filePath: string): Promise<{ stream: Readable; size: number | undefined }> {
    return new Promise((resolve, reject) => {
      const req = this.session.request({
        ':method': 'GET',
        ':path': `/v1/files?path=${encodeURIComponent(filePath)}`,
      });
      req.on('response', (h) => {
        const status = Number(h[':status']);
        if (status === 200) {
          const len = h['content-length'];
          resolve({ stream: req, size: len === undefined ? undefined : Number(len) });
          return;
        }
        let text = '';
        req.setEncoding('utf8');
        req.on('data', (d: string) => (text += d));
        req.on('end', () => reject(agentHttpError(status, text)));
      });
      req.on('error', (e) => reject(new AgentError(0, `agent read ${filePath}: ${e.message}`)));
      req.end();
    });
  }

  /** Stream `body` into a guest file (written to a temp file, renamed into place). */
  writeFile(filePath: string, body: Readable | Buffer | string, mode?: number): Promise<FileEntry> {
    return new Promise((resolve, reject) => {
      const q = `path=${encodeURIComponent(filePath)}${mode === undefined ? '' : `&mode=${mode.toString(8)}`}`;
      const req = this.session.request({ ':method': 'PUT', ':path': `/v1/files?${q}` });
      readReply(req, `write ${filePath}`).then(({ status, text }) => {
        if (status === 200) resolve(JSON.parse(text) as FileEntry);
        else reject(agentHttpError(status, text));
      }, reject);
      if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
      else {
        body.on('error', (e) => {
          req.close(http2.constants.NGHTTP2_CANCEL);
          reject(e);
        });
        body.pipe(req);
      }
    });
  }

  listFiles(dir: string, depth = 1): Promise<{ entries: FileEntry[] }> {
    return this.json('GET', `/v1/files/list?path=${encodeURIComponent(dir)}&depth=${depth}`);
  }

  statFile(filePath: string): Promise<FileEntry> {
    return this.json('GET', `/v1/files/stat?path=${encodeURIComponent(filePath)}`);
  }

  removeFile(filePath: string, recursive = false): Promise<{ removed: string }> {
    return this.json('POST', '/v1/files/remove', { path: filePath, recursive });
  }

  makeDir(dir: string): Promise<FileEntry> {
    return this.json('POST', '/v1/files/mkdir', { path: dir });
  }

  /** Whether the HTTP/2 session to the agent is still usable. */
  get usable(): boolean {
    return !this.session.closed && !this.session.destroyed && !this.sock.destroyed;
  }

  close(): void {
    this.session.close();
    this.sock.destroy();
  }
}
