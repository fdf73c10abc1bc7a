import { Duplex } from 'node:stream';
import type net from 'node:net';
import { StartedWatch } from './started-watch.js';

/** The client connection preface every HTTP/2 client sends first (RFC 9113 §3.4). */
const PREFACE_BYTES = 24;
const FRAME_HEADER_BYTES = 9;
const GOAWAY = 0x07;

/**
 * The byte pipe between the host's HTTP/2 client and the guest agent, watched in both directions.
 *
 * Node's HTTP/2 client does not surface a session that nghttp2 terminated for a protocol error: nghttp2
 * sends GOAWAY and stops reading, and Node emits nothing and fails no stream until the peer closes —
 * which a guest never does. So this pipe reports, as 'lost' (once):
 * - outbound: a GOAWAY frame written by our own HTTP/2 stack, i.e. it found the guest's bytes invalid
 *   (garbage, a frame too large, a bad stream id); the frame's debug text names the reason;
 * - inbound: the STARTED announcement of a restarted agent (protocol/resync.ts), which is also invalid
 *   HTTP/2 but is named for what it is.
 */
export class AgentWire extends Duplex {
  private started = new StartedWatch();
  private out = new OutboundFrames();
  private reported = false;

  constructor(private readonly sock: net.Socket) {
    super();
    sock.on('data', (d: Buffer) => {
      this.scanInbound(d);
      if (!this.push(d)) sock.pause();
    });
    sock.on('end', () => this.push(null));
    sock.on('close', () => this.destroy());
    sock.on('error', (e) => this.destroy(e));
    sock.resume();
  }

  private lost(why: string): void {
    if (this.reported) return;
    this.reported = true;
    this.emit('lost', why);
  }

  private scanInbound(d: Buffer): void {
    if (this.started.seen(d)) this.lost('the guest agent restarted');
  }

  override _read(): void {
    this.sock.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const goaway = this.out.push(chunk);
    if (goaway) this.lost(`the host's HTTP/2 stack rejected the guest's bytes (${goaway})`);
    this.sock.write(chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.sock.end(cb);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.sock.destroy();
    cb(err);
  }
}

/** Follows the frames our own client writes, to notice the GOAWAY it sends when it gives up. */
export class OutboundFrames {
  private skip = PREFACE_BYTES;
  private header = Buffer.alloc(0);
  private goaway: { need: number; got: Buffer[] } | undefined;

  /** Feed written bytes; returns a description when a complete GOAWAY frame went out. */
  push(chunk: Buffer): string | undefined {
    let off = 0;
    let found: string | undefined;
    while (off < chunk.length) {
      if (this.goaway) {
        const take = Math.min(this.goaway.need, chunk.length - off);
        this.goaway.got.push(chunk.subarray(off, off + take));
        this.goaway.need -= take;
        off += take;
        if (this.goaway.need === 0) {
          found ??= describeGoaway(Buffer.concat(this.goaway.got));
          this.goaway = undefined;
        }
        continue;
      }
      if (this.skip > 0) {
        const take = Math.min(this.skip, chunk.length - off);
        this.skip -= take;
        off += take;
        continue;
      }
      const take = Math.min(FRAME_HEADER_BYTES - this.header.length, chunk.length - off);
      this.header = Buffer.concat([this.header, chunk.subarray(off, off + take)]);
      off += take;
      if (this.header.length < FRAME_HEADER_BYTES) continue;
      const len = this.header.readUIntBE(0, 3);
      const type = this.header[3];
      this.header = Buffer.alloc(0);
      if (type === GOAWAY) {
        this.goaway = { need: len, got: [] };
        if (len === 0) {
          found ??= 'GOAWAY';
          this.goaway = undefined;
        }
      } else this.skip = len;
    }
    return found;
  }
}

const H2_ERRORS = [
  'NO_ERROR',
  'PROTOCOL_ERROR',
  'INTERNAL_ERROR',
  'FLOW_CONTROL_ERROR',
  'SETTINGS_TIMEOUT',
  'STREAM_CLOSED',
  'FRAME_SIZE_ERROR',
  'REFUSED_STREAM',
  'CANCEL',
  'COMPRESSION_ERROR',
  'CONNECT_ERROR',
  'ENHANCE_YOUR_CALM',
  'INADEQUATE_SECURITY',
  'HTTP_1_1_REQUIRED',
];

function describeGoaway(payload: Buffer): string {
  if (payload.length < 8) return 'GOAWAY';
  const code = payload.readUInt32BE(4);
  const debug = payload
    .subarray(8, 8 + 120)
    .toString('latin1')
    .replace(/[^\x20-\x7e]/g, '?');
  return `${H2_ERRORS[code] ?? `error ${code}`}${debug ? `: ${debug}` : ''}`;
}
