import type net from 'node:net';
import type { z } from 'zod';
import { scaledMs } from '../util/host-speed.js';
import type { EvalRequest, EvalResult, IdentityResult } from '../protocol/agent-api.js';
import { AGENT_LIMITS, AgentError } from './errors.js';
import { identityFor } from './identity.js';
import { connectResynced } from './resync-socket.js';
import { ackFrame } from '../protocol/resync.js';
import { StartedWatch } from './started-watch.js';
import {
  DroppedSchema,
  EvalResultSchema,
  firstIssue,
  IdentityResultSchema,
  PythonPingSchema,
} from './replies.js';

interface Waiter {
  what: string;
  schema: z.ZodType;
  resolve: (v: unknown) => void;
  reject: (e: AgentError) => void;
  timer: NodeJS.Timeout | undefined;
}

/** How long past an eval's own timeout the guest may take to answer: its hard kill comes 5 s after. */
const EVAL_GRACE_MS = 15_000;

/**
 * Host-side client of the warm Python interpreter's own virtio-serial port (the guest end is
 * pyworker.py): the same resync handshake as the agent, then one JSON line per request and per reply,
 * matched by id. It carries what a fresh child needs first (identity, Python eval) without the agent's
 * HTTP/2 stack, whose first use in each child costs more guest code than the work itself.
 *
 * The guest is untrusted like the agent: a reply is bounded (AGENT_LIMITS.replyBytes), parsed and
 * validated, and anything else ends this session with a named error for the requests in flight.
 */
export class PythonPort {
  private lost: string | undefined;
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly started = new StartedWatch();
  /**
   * Until the first reply byte: this session's ACK, which the worker in a snapshot made by an earlier
   * forkd sends again for each repeated HELLO (the host resends it until answered), and the bytes held
   * because they may be the start of one.
   */
  private repeatAck: Buffer | undefined;
  private held: Buffer = Buffer.alloc(0);

  private constructor(
    private readonly sock: net.Socket,
    nonce: Buffer,
  ) {
    this.repeatAck = ackFrame(nonce);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('close', () => this.markLost('the python socket closed (QEMU exited?)'));
    sock.on('error', (e) => this.markLost(`the python socket failed: ${e.message}`));
    sock.resume();
  }

  static async connect(
    socketPath: string,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<PythonPort> {
    const { sock, nonce } = await connectResynced(socketPath, opts, "the guest's Python worker");
    return new PythonPort(sock, nonce);
  }

  /** False once the session failed; a new connect resyncs. */
  get usable(): boolean {
    return !this.lost;
  }

  close(): void {
    this.markLost('the python session was closed');
  }

  private markLost(why: string): void {
    if (this.lost) return;
    this.lost = why;
    for (const w of this.waiters.values()) {
      clearTimeout(w.timer);
      w.reject(new AgentError(0, `python ${w.what}: ${why}`, 'ECONNRESET'));
    }
    this.waiters.clear();
    this.sock.destroy();
  }

  private onData(d: Buffer): void {
    if (this.lost) return;
    // A worker that started again (it crashed, or its timeout's hard kill ended it) announces itself:
    // its interpreter state is gone and nothing in flight will be answered.
    if (this.started.seen(d)) {
      this.markLost("the guest's Python worker restarted (its variables and imports are gone)");
      return;
    }
    if (this.repeatAck) {
      const r = skipRepeatedAcks(Buffer.concat([this.held, d]), this.repeatAck);
      if (r.undecided) {
        this.held = r.rest;
        return;
      }
      this.repeatAck = undefined;
      this.held = Buffer.alloc(0);
      d = r.rest;
    }
    let start = 0;
    let nl: number;
    while ((nl = d.indexOf(0x0a, start)) >= 0) {
      this.pending.push(d.subarray(start, nl));
      const line = Buffer.concat(this.pending).toString('utf8');
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
      this.onLine(line);
      if (this.lost) return;
    }
    if (start < d.length) {
      this.pending.push(d.subarray(start));
      this.pendingBytes += d.length - start;
      if (this.pendingBytes > AGENT_LIMITS.replyBytes)
        this.markLost(`the guest sent a reply line larger than ${AGENT_LIMITS.replyBytes} bytes`);
    }
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      this.markLost('the guest sent a reply that is not JSON');
      return;
    }
    const id = (msg as { id?: unknown } | null)?.id;
    const w = typeof id === 'number' ? this.waiters.get(id) : undefined;
    if (!w) {
      this.markLost('the guest sent a reply to no request');
      return;
    }
    this.waiters.delete(id as number);
    clearTimeout(w.timer);
    const m = msg as { ok?: unknown; error?: { message?: unknown } };
    // Every op but eval answers ok:false only for a request it could not carry out.
    if (w.schema !== EvalResultSchema && m.ok === false) {
      const why = typeof m.error?.message === 'string' ? m.error.message : 'failed';
      w.reject(new AgentError(500, `python ${w.what}: ${why.slice(0, AGENT_LIMITS.errorChars)}`));
      return;
    }
    const r = w.schema.safeParse(msg);
    if (!r.success) {
      w.reject(new AgentError(200, `python ${w.what}: malformed reply (${firstIssue(r.error)})`, 'EPROTO'));
      return;
    }
    w.resolve(r.data);
  }

  private request<T>(op: string, body: Record<string, unknown>, schema: z.ZodType, timeoutMs?: number) {
    return new Promise<T>((resolve, reject) => {
      if (this.lost) {
        reject(new AgentError(0, `python ${op}: ${this.lost}`, 'ECONNRESET'));
        return;
      }
      const id = this.nextId++;
      const w: Waiter = {
        what: op,
        schema,
        resolve: resolve as (v: unknown) => void,
        reject,
        timer: undefined,
      };
      if (timeoutMs !== undefined) {
        const ms = scaledMs(timeoutMs);
        w.timer = setTimeout(() => {
          this.waiters.delete(id);
          reject(new AgentError(0, `python ${op}: no answer within ${ms} ms`, 'ETIMEDOUT'));
          // Later replies would be out of step with their requests: the next use resyncs.
          this.markLost(`a request got no answer within ${ms} ms`);
        }, ms);
      }
      this.waiters.set(id, w);
      this.sock.write(JSON.stringify({ ...body, op, id }) + '\n');
    });
  }

  ping(timeoutMs = 10_000): Promise<{ python: string; numpy: string | null; pid: number }> {
    return this.request('ping', {}, PythonPingSchema, timeoutMs);
  }

  /** Tell a freshly restored child who it is (see AgentClient.announce: the same identity, one hop). */
  announce(sandboxId: string): Promise<IdentityResult> {
    return this.request('identity', { ...identityFor(sandboxId) }, IdentityResultSchema, 30_000).then(
      (r) => r as IdentityResult,
    );
  }

  /** Python eval in a named context; `timeout_ms` interrupts the code in the guest (Timeout error). */
  eval(req: Omit<EvalRequest, 'language'>): Promise<EvalResult> {
    const guard = req.timeout_ms && req.timeout_ms > 0 ? req.timeout_ms + EVAL_GRACE_MS : undefined;
    return this.request(
      'eval',
      {
        code: req.code,
        context: req.context ?? 'default',
        ...(req.timeout_ms ? { timeout_ms: req.timeout_ms } : {}),
        ...(req.rich ? { rich: true } : {}),
        ...(req.cwd ? { cwd: req.cwd } : {}),
        ...(req.env ? { env: req.env } : {}),
      },
      EvalResultSchema,
      guard,
    );
  }

  /** Forget a named context's variables (its memory is freed with them). */
  async dropContext(context: string): Promise<boolean> {
    const r = await this.request<{ dropped?: unknown }>('drop_context', { context }, DroppedSchema, 10_000);
    return r.dropped === true;
  }
}

/**
 * Drop whole copies of `ack` at the start of `buf`. `undecided` when what is left could still be the
 * start of another copy (a reply line starts with '{', never with the ACK's first byte).
 */
export function skipRepeatedAcks(buf: Buffer, ack: Buffer): { rest: Buffer; undecided: boolean } {
  let at = 0;
  while (buf.length - at >= ack.length && buf.compare(ack, 0, ack.length, at, at + ack.length) === 0)
    at += ack.length;
  const rest = buf.subarray(at);
  const undecided = rest.length < ack.length && ack.compare(rest, 0, rest.length, 0, rest.length) === 0;
  return { rest, undecided };
}
