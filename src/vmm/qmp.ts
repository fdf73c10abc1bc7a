import net from 'node:net';
import { EventEmitter } from 'node:events';
import { scaledMs } from '../util/host-speed.js';
import { connectUnix } from '../util/unix-socket.js';

/** An error QEMU returned for a QMP command ({"error": {"class", "desc"}}). */
export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = 'QmpError';
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Client for the QEMU Machine Protocol over a unix socket: newline-delimited JSON, one greeting,
 * capability negotiation, then commands matched to replies by `id`, interleaved with async events.
 */
export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private closed = false;
  greeting:
    | { QMP: { version: { qemu: { major: number; minor: number; micro: number }; package?: string } } }
    | undefined;

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
    sock.on('error', (e) => this.onClose(e));
  }

  /** Connect, retrying while QEMU has not created the socket yet, and negotiate capabilities. */
  static async connect(
    path: string,
    opts: { timeoutMs?: number; isAlive?: () => boolean } = {},
  ): Promise<QmpClient> {
    // Timeouts here are reference-host values, stretched to this host's measured speed.
    const deadline = Date.now() + scaledMs(opts.timeoutMs ?? 10_000);
    const sock = await connectUnix(path, {
      deadline,
      retryMs: 2,
      ...(opts.isAlive ? { isAlive: opts.isAlive } : {}),
    });
    const client = new QmpClient(sock);
    await client.handshake(Math.max(1000, deadline - Date.now()));
    return client;
  }

  private async handshake(timeoutMs: number): Promise<void> {
    this.greeting = (await this.waitGreeting(timeoutMs)) as QmpClient['greeting'];
    await this.execute('qmp_capabilities');
  }

  private waitGreeting(timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for the QMP greeting')), timeoutMs);
      this.once('greeting', (g) => {
        clearTimeout(t);
        resolve(g);
      });
      this.once('closed', (e: Error) => {
        clearTimeout(t);
        reject(e);
      });
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue; // QEMU only sends JSON; ignore anything else rather than crash
      }
      this.dispatch(msg);
    }
  }

  private dispatch(msg: Record<string, unknown>): void {
    if ('QMP' in msg) {
      this.emit('greeting', msg);
      return;
    }
    if ('event' in msg) {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = msg.id === undefined ? undefined : String(msg.id);
    const p = id ? this.pending.get(id) : undefined;
    if (!p || !id) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, err.class ?? 'GenericError', err.desc ?? 'unknown error'));
    } else {
      p.resolve(msg.return);
    }
  }

  private onClose(e: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`QMP ${p.command}: ${e.message}`));
    }
    this.pending.clear();
    this.emit('closed', e);
  }

  /** Run one QMP command and resolve with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, refTimeoutMs = 30_000): Promise<T> {
    const timeoutMs = scaledMs(refTimeoutMs);
    if (this.closed) return Promise.reject(new Error(`QMP ${command}: connection closed`));
    const id = String(this.nextId++);
    const payload: Record<string, unknown> = { execute: command, id };
    if (args) payload.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.sock.write(JSON.stringify(payload) + '\n');
    });
  }

  /** Resolve with the next event called `name` that `match`es (or reject after timeoutMs). */
  waitEvent(name: string, refTimeoutMs: number, match?: (ev: QmpEvent) => boolean): Promise<QmpEvent> {
    const timeoutMs = scaledMs(refTimeoutMs);
    return new Promise((resolve, reject) => {
      const onEvent = (ev: QmpEvent) => {
        if (ev.event !== name || (match && !match(ev))) return;
        cleanup();
        resolve(ev);
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new Error(`no QMP ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(t);
        this.off('event', onEvent);
      };
      this.on('event', onEvent);
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.sock.destroy();
    this.onClose(new Error('closed by client'));
  }
}
