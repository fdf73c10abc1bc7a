/**
 * The resync handshake that starts every host connection to the guest agent.
 *
 * The virtio-serial port is a byte pipe whose connection boundaries the guest cannot observe reliably:
 * a quick host reconnect is invisible, bytes of an old connection (and replies to requests that were in
 * flight when the parent was snapshotted) are delivered to the next one. So on every connect the host
 * sends HELLO + nonce; the guest, which scans its input for HELLO at all times, drops its whole session
 * (HTTP/2 state, queued writes) and answers ACK + nonce; the host discards everything before that ACK.
 * Only then does the HTTP/2 session start. This module must only use Node built-ins: it runs in the guest.
 *
 * The magic values are kept as hex text so that this file (or any copy of the agent) never contains the
 * raw bytes and cannot trigger a resync when it is itself transferred through the channel.
 */
export const HELLO = Buffer.from('f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f649', 'hex');
export const ACK = Buffer.from('f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f64a', 'hex');
/**
 * Written by the agent once when it starts. A host that still has a session with the agent's previous
 * instance (the agent crashed, was OOM-killed, or the user's code killed it) must learn of it at once:
 * read as HTTP/2, these bytes are a frame header of length 0xf0726b (15.7 MB), above every allowed
 * SETTINGS_MAX_FRAME_SIZE, so the host's HTTP/2 stack fails that session with FRAME_SIZE_ERROR
 * (RFC 9113 §4.2), and the host resyncs on its next request. A host in its handshake ignores it.
 */
export const STARTED = Buffer.from('f0726b64a9c31e57d40b8e22c16f9a4d3b7e05c8d2a1f64b', 'hex');
export const NONCE_BYTES = 16;
export const FRAME_BYTES = HELLO.length + NONCE_BYTES;

export function helloFrame(nonce: Buffer): Buffer {
  return Buffer.concat([HELLO, nonce]);
}
export function ackFrame(nonce: Buffer): Buffer {
  return Buffer.concat([ACK, nonce]);
}

export interface ScanResult {
  /** Bytes that belong to the current session (before any HELLO found). */
  data: Buffer;
  /** Set when a complete HELLO + nonce was found: the nonce and the bytes after it. */
  hello?: { nonce: Buffer; rest: Buffer };
}

/**
 * Guest-side incremental scanner. Bytes are passed through immediately except for a tail that could be
 * the start of a HELLO frame; that tail is held back until more input decides it (or flush() is called
 * after a short quiet period, so a frame that merely ends like the magic never stalls).
 */
export class HelloScanner {
  private held = Buffer.alloc(0);

  push(chunk: Buffer): ScanResult {
    const buf = this.held.length ? Buffer.concat([this.held, chunk]) : chunk;
    this.held = Buffer.alloc(0);
    const at = buf.indexOf(HELLO);
    if (at >= 0) {
      if (buf.length - at < FRAME_BYTES) {
        // Magic seen but the nonce has not fully arrived.
        this.held = Buffer.from(buf.subarray(at));
        return { data: buf.subarray(0, at) };
      }
      const nonce = Buffer.from(buf.subarray(at + HELLO.length, at + FRAME_BYTES));
      return { data: buf.subarray(0, at), hello: { nonce, rest: buf.subarray(at + FRAME_BYTES) } };
    }
    const keep = partialPrefixLength(buf, HELLO);
    if (keep > 0) this.held = Buffer.from(buf.subarray(buf.length - keep));
    return { data: buf.subarray(0, buf.length - keep) };
  }

  /** Release held bytes (called when no more input arrived for a while). */
  flush(): Buffer {
    const h = this.held;
    this.held = Buffer.alloc(0);
    return h;
  }

  get holding(): boolean {
    return this.held.length > 0;
  }

  reset(): void {
    this.held = Buffer.alloc(0);
  }
}

/** Length of the longest suffix of `buf` that is a proper prefix of `magic`. */
export function partialPrefixLength(buf: Buffer, magic: Buffer): number {
  const max = Math.min(magic.length - 1, buf.length);
  for (let n = max; n > 0; n--) {
    if (buf.compare(magic, 0, n, buf.length - n, buf.length) === 0) return n;
  }
  return 0;
}

/** Host side: find ACK + nonce in accumulated input; returns the bytes after it, or undefined. */
export function findAck(buf: Buffer, nonce: Buffer): Buffer | undefined {
  const frame = ackFrame(nonce);
  const at = buf.indexOf(frame);
  if (at < 0) return undefined;
  return buf.subarray(at + frame.length);
}
