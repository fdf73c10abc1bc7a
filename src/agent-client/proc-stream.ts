import http2 from 'node:http2';
import type { ProcEvent } from '../protocol/agent-api.js';
import { firstIssue, ProcEventSchema } from './replies.js';
import { AGENT_LIMITS, AgentError } from './errors.js';

/**
 * The events of one guest process as the agent streams them (NDJSON), validated line by line and
 * iterated with backpressure: the HTTP/2 stream is paused while the consumer is behind. Closing the
 * iterator (or `close()`) cancels the stream; the process runs on in the guest.
 */
export class ProcEventStream implements AsyncIterable<ProcEvent> {
  private readonly queue: ProcEvent[] = [];
  private waiting:
    { resolve: (r: IteratorResult<ProcEvent>) => void; reject: (e: Error) => void } | undefined;
  private buf = '';
  private done = false;
  private failure: Error | undefined;

  constructor(private readonly req: http2.ClientHttp2Stream) {
    req.setEncoding('utf8');
    req.on('data', (d: string) => this.onData(d));
    req.on('end', () => this.finish());
    req.on('close', () =>
      this.finish(
        req.rstCode && req.rstCode !== http2.constants.NGHTTP2_NO_ERROR
          ? new AgentError(0, 'the process stream was reset (the agent session was lost?)', 'ECONNRESET')
          : undefined,
      ),
    );
    req.on('error', (e) => this.finish(new AgentError(0, `process stream: ${e.message}`, 'ECONNRESET')));
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
          new AgentError(0, 'process stream: the guest sent a line that is not JSON', 'EPROTO'),
        );
      }
      const r = ProcEventSchema.safeParse(raw);
      if (!r.success)
        return this.fail(
          new AgentError(0, `process stream: malformed event (${firstIssue(r.error)})`, 'EPROTO'),
        );
      this.push(r.data as ProcEvent);
    }
    if (this.buf.length > AGENT_LIMITS.execLineBytes)
      this.fail(
        new AgentError(0, `process stream: a line longer than ${AGENT_LIMITS.execLineBytes} bytes`, 'E2BIG'),
      );
  }

  private push(ev: ProcEvent): void {
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

  next(): Promise<IteratorResult<ProcEvent>> {
    const ev = this.queue.shift();
    if (this.queue.length < 16) this.req.resume();
    if (ev) return Promise.resolve({ value: ev, done: false });
    if (this.done)
      return this.failure ? Promise.reject(this.failure) : Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<ProcEvent> {
    return {
      next: () => this.next(),
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
  }
}
