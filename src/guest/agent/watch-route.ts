/** POST /v1/watch {path, recursive}: NDJSON `start`, then one line per change, until the stream closes. */
import fs from 'node:fs';
import http2 from 'node:http2';
import { checkPath } from './files.js';
import { DirWatch } from './watch.js';

type Stream = http2.ServerHttp2Stream;
type Send = (stream: Stream, status: number, body: unknown) => void;

export function watchRoute(stream: Stream, body: Record<string, unknown>, send: Send): void {
  const p = checkPath(body.path);
  if (!p) return send(stream, 400, { error: '"path" must be an absolute path' });
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return send(stream, 404, { error: `${p} does not exist`, code: 'ENOENT' });
  }
  if (!st.isDirectory()) return send(stream, 400, { error: `${p} is not a directory`, code: 'ENOTDIR' });
  stream.respond({ ':status': 200, 'content-type': 'application/x-ndjson' });
  // A host that stops reading gets its watch ended rather than a guest that buffers without end.
  const write = (line: unknown) => {
    if (stream.destroyed || stream.closed) return;
    if (stream.writableLength > 8 << 20) {
      watch.close();
      stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      return;
    }
    stream.write(JSON.stringify(line) + '\n');
  };
  // eslint-disable-next-line prefer-const -- `write` needs it before it exists
  let watch: DirWatch;
  watch = new DirWatch(p, body.recursive === true, (name, op) => write({ type: 'event', name, op }));
  write({ type: 'start' });
  stream.on('close', () => watch.close());
}
