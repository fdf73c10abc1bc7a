import http2 from 'node:http2';
import type { z } from 'zod';
import { firstIssue } from './replies.js';
import { AGENT_LIMITS, AgentError } from './errors.js';

/**
 * A stream of events from the agent (NDJSON: a process's output, a directory's changes), validated
 * line by line against `schema` and iterated with backpressure: the HTTP/2 stream is paused while the
 * consumer is behind. Closing the iterator (or `close()`) cancels the stream (a process runs on).
 */
export class NdjsonStream<T> implements AsyncIterable<T> {
  private readonly queue: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: Error) => void } | undefined;
  private buf = '';
  private done = false;
  private failure: Error | undefined;

  constructor(
    private readonly req: http2.ClientHttp2Stream,
    private readonly schema: z.ZodType,
    private readonly what: string,
  ) {
    req.setEncoding('utf8');
    req.on('data', (d: string) => this.onData(d));
    req.on('end', () => this.finish());
    req.on('close', () =>
      this.finish(
        req.rstCode && req.rstCode !== http2.constants.NGHTTP2_NO_ERROR
          ? new AgentError(0, `the ${what} stream was reset (the agent session was lost?)`, 'ECONNRESET')
          : undefined,
      ),
    );
    req.on('error', (e) => this.finish(new AgentError(0, `${what} stream: ${e.message}`, 'ECONNRESET')));
  }

  private onData(d: string): void {
    if (this.done) return;
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch {
        return this.fail(
          new AgentError(0, `${this.what} stream: the guest sent a line that is not JSON`, 'EPROTO'),
        );
      }
      const r = this.schema.safeParse(raw);
      if (!r.success)
        return this.fail(
          new AgentError(0, `${this.what} stream: malformed event (${firstIssue(r.error)})`, 'EPROTO'),
        );
      this.push(r.data as T);
    }
    if (this.buf.length > AGENT_LIMITS.execLineBytes)
      this.fail(
        new AgentError(
          0,
          `${this.what} stream: a line longer than ${AGENT_LIMITS.execLineBytes} bytes`,
          'E2BIG',
        ),
      );
  }

  private push(ev: T): void {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: ev, done: false });
      return;
    }
    this.queue.push(ev);
    if (this.queue.length > 64) this.req.pause();
  }

  private fail(e: Error): void {
    this.req.close(http2.constants.NGHTTP2_CANCEL);
    this.finish(e);
  }

  private finish(e?: Error): void {
    if (this.done) return;
    this.done = true;
    this.failure = e;
    if (this.waiting && !this.queue.length) {
      const w = this.waiting;
      this.waiting = undefined;
      if (e) w.reject(e);
      else w.resolve({ value: undefined, done: true });
    }
  }

  close(): void {
    if (!this.req.closed) this.req.close(http2.constants.NGHTTP2_CANCEL);
    this.finish();
  }

  next(): Promise<IteratorResult<T>> {
    const ev = this.queue.shift();
    if (this.queue.length < 16) this.req.resume();
    if (ev) return Promise.resolve({ value: ev, done: false });
    if (this.done)
      return this.failure ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => this.next(),
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
  }
}
