/** The agent's /v1/procs routes: the process table (procs.ts) over HTTP/2 streams. */
import type http2 from 'node:http2';
import type { ProcEvent, ProcStartRequest } from '../../protocol/agent-api.js';
import { parseSelector, ProcError, ProcTable, validateProcStart, type Subscriber } from './procs.js';

type Stream = http2.ServerHttp2Stream;
type Send = (stream: Stream, status: number, body: unknown) => void;

const SIGNALS = new Set([
  'SIGKILL',
  'SIGTERM',
  'SIGINT',
  'SIGHUP',
  'SIGQUIT',
  'SIGUSR1',
  'SIGUSR2',
  'SIGSTOP',
  'SIGCONT',
]);
/** Input for one process in one request (stdin or a terminal's keystrokes). */
const MAX_INPUT_BYTES = 8 << 20;

const table = new ProcTable();

/**
 * An NDJSON response stream as a subscriber of a process's events. Its headers go out with the first
 * event, so a start or attach that fails is still a plain error reply.
 */
function streamSubscriber(stream: Stream): Subscriber {
  const live = () => !stream.destroyed && !stream.closed;
  return {
    send: (ev: ProcEvent) => {
      if (!live()) return;
      if (!stream.headersSent) stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
      stream.write(JSON.stringify(ev) + '\n');
    },
    backlog: () => (live() ? stream.writableLength : 0),
    onDrain: (cb) => stream.once('drain', cb),
    end: () => {
      if (live()) stream.end();
    },
  };
}

function fail(stream: Stream, send: Send, e: unknown): void {
  if (e instanceof ProcError) send(stream, e.status, { error: e.message });
  else send(stream, 500, { error: (e as Error).message });
}

/** Serves `route` when it is one of the process routes; false otherwise. */
export async function procRoute(
  route: string,
  stream: Stream,
  body: Record<string, unknown>,
  send: Send,
): Promise<boolean> {
  switch (route) {
    case 'GET /v1/procs':
      send(stream, 200, { processes: table.list() });
      return true;
    case 'POST /v1/procs': {
      const req = body as unknown as ProcStartRequest;
      const err = validateProcStart(req);
      if (err) {
        send(stream, 400, { error: err });
        return true;
      }
      const sub = streamSubscriber(stream);
      let pid: number | undefined;
      stream.on('close', () => {
        if (pid !== undefined) table.detach(pid, sub);
      });
      try {
        pid = (await table.start(req, sub)).pid;
        if (stream.destroyed || stream.closed) table.detach(pid, sub);
      } catch (e) {
        fail(stream, send, e);
      }
      return true;
    }
    case 'POST /v1/procs/attach': {
      const sel = parseSelector(body);
      if (typeof sel === 'string') {
        send(stream, 400, { error: sel });
        return true;
      }
      const sub = streamSubscriber(stream);
      try {
        const { pid } = table.attach(sel, sub);
        stream.on('close', () => table.detach(pid, sub));
      } catch (e) {
        fail(stream, send, e);
      }
      return true;
    }
    case 'POST /v1/procs/input':
    case 'POST /v1/procs/close-stdin':
    case 'POST /v1/procs/resize':
    case 'POST /v1/procs/signal': {
      const sel = parseSelector(body);
      if (typeof sel === 'string') {
        send(stream, 400, { error: sel });
        return true;
      }
      try {
        if (route === 'POST /v1/procs/input') {
          if (typeof body.data !== 'string') throw new ProcError(400, '"data" must be base64 text');
          const data = Buffer.from(body.data, 'base64');
          if (data.length > MAX_INPUT_BYTES)
            throw new ProcError(413, `input over ${MAX_INPUT_BYTES} bytes: send it in parts`);
          table.input(sel, data);
        } else if (route === 'POST /v1/procs/close-stdin') table.closeStdin(sel);
        else if (route === 'POST /v1/procs/resize') {
          const n = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 10_000;
          if (!n(body.cols) || !n(body.rows))
            throw new ProcError(400, '"cols" and "rows" must be integers 1..10000');
          table.resize(sel, body.cols as number, body.rows as number);
        } else {
          if (typeof body.signal !== 'string' || !SIGNALS.has(body.signal))
            throw new ProcError(400, `"signal" must be one of ${[...SIGNALS].join(', ')}`);
          table.signal(sel, body.signal as NodeJS.Signals);
        }
        send(stream, 200, {});
      } catch (e) {
        fail(stream, send, e);
      }
      return true;
    }
    default:
      return false;
  }
}
