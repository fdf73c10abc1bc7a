/** What envd's Connect services share: the request's sandbox, error codes, keepalives on idle streams. */
import { Code, ConnectError, createContextKey, type HandlerContext } from '@connectrpc/connect';
import type { FastifyRequest } from 'fastify';
import type { NdjsonStream } from '../../agent-client/ndjson-stream.js';
import { AgentError } from '../../agent-client/client.js';
import type { PlaneRequest } from './sandbox-plane.js';

export const kPlane = createContextKey<PlaneRequest | undefined>(undefined, { description: 'e2b sandbox' });
export const kRaw = createContextKey<FastifyRequest | undefined>(undefined, { description: 'http request' });

export function planeOf(ctx: HandlerContext): PlaneRequest {
  const p = ctx.values.get(kPlane);
  if (!p) throw new ConnectError('no sandbox for this request', Code.Unavailable);
  return p;
}

/** A guest agent's failure as the Connect error the SDK turns into its own classes. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof AgentError) {
    const code =
      e.status === 404
        ? Code.NotFound
        : e.status === 400 || e.status === 413
          ? Code.InvalidArgument
          : e.status === 401
            ? Code.Unauthenticated
            : e.status === 409
              ? Code.AlreadyExists
              : e.status === 429
                ? Code.ResourceExhausted
                : e.status === 0
                  ? Code.Unavailable
                  : Code.Internal;
    return new ConnectError(e.message, code);
  }
  return new ConnectError((e as Error).message ?? String(e), Code.Internal);
}

/**
 * When the sandbox itself is gone, an open stream is cut at the transport (no end-of-stream
 * message): that is how the SDK learns it, probing /health next and raising its "sandbox was killed"
 * error. Other failures end the stream with their Connect error.
 */
export function failStream(ctx: HandlerContext, e: unknown): never {
  const plane = ctx.values.get(kPlane);
  if (plane && (plane.gone() || !plane.live.vm.isAlive())) ctx.values.get(kRaw)?.raw.socket.destroy();
  throw toConnectError(e);
}

/** The keepalive interval the client asked for (seconds; `Keepalive-Ping-Interval`), bounded. */
export function keepaliveMs(ctx: HandlerContext): number {
  const s = Number(ctx.requestHeader.get('keepalive-ping-interval') ?? 50);
  return Math.min(Math.max(Number.isFinite(s) ? s : 50, 1), 300) * 1000;
}

/** `src`'s items, with `keepalive()` yielded whenever nothing came for `everyMs`. */
export async function* withKeepalive<T, K>(
  src: AsyncIterator<T>,
  everyMs: number,
  keepalive: () => K,
): AsyncGenerator<T | K> {
  let pending = src.next();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const tick = new Promise<'tick'>((r) => (timer = setTimeout(() => r('tick'), everyMs)));
    const r = await Promise.race([pending, tick]).finally(() => clearTimeout(timer));
    if (r === 'tick') {
      yield keepalive();
      continue;
    }
    if (r.done) return;
    pending = src.next();
    yield r.value;
  }
}

/**
 * Relay an agent event stream as a Connect server stream: each event mapped by `map`, keepalives while
 * idle, until `isLast` saw the last event, the client went, or its deadline passed (deadline_exceeded;
 * what the events were about, a process say, runs on). A stream the guest ended early is `unavailable`,
 * and when the sandbox is gone the transport is cut (failStream).
 */
export async function* relayAgentStream<T, R>(
  stream: NdjsonStream<T>,
  ctx: HandlerContext,
  what: string,
  map: (ev: T) => R,
  keepalive: () => R,
  isLast: (ev: T) => boolean = () => false,
): AsyncGenerator<R> {
  const stop = () => stream.close();
  ctx.signal.addEventListener('abort', stop, { once: true });
  let last = false;
  try {
    const ka = Symbol('keepalive');
    for await (const ev of withKeepalive(stream[Symbol.asyncIterator](), keepaliveMs(ctx), () => ka)) {
      if (ev === ka) {
        yield keepalive();
        continue;
      }
      last ||= isLast(ev as T);
      yield map(ev as T);
    }
    if (!last && !ctx.signal.aborted)
      throw new ConnectError(`the ${what} stream from the guest ended early`, Code.Unavailable);
  } catch (e) {
    failStream(ctx, e);
  } finally {
    ctx.signal.removeEventListener('abort', stop);
    stream.close();
  }
  if (ctx.signal.aborted) throw ConnectError.from(ctx.signal.reason);
}
