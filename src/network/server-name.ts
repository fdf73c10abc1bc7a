/**
 * The name a client connection asks for, from its first bytes: the SNI of a TLS ClientHello, or the
 * Host header of an HTTP/1 request. Pure parsing of untrusted input, bounded by the buffer it is given.
 */
export type ServerName =
  | { kind: 'name'; name: string }
  /** not enough bytes yet to tell */
  | { kind: 'more' }
  /** the bytes are neither, or name nothing */
  | { kind: 'none' };

const MORE: ServerName = { kind: 'more' };
const NONE: ServerName = { kind: 'none' };

export function serverName(buf: Buffer): ServerName {
  if (buf.length === 0) return MORE;
  return buf[0] === 0x16 ? tlsServerName(buf) : httpHost(buf);
}

/** SNI (extension 0, host_name) of the ClientHello in the first TLS record. */
function tlsServerName(b: Buffer): ServerName {
  if (b.length < 5) return MORE;
  const recLen = b.readUInt16BE(3);
  if (b.length < 5 + recLen) return MORE;
  const end = 5 + recLen;
  let p = 5;
  // Handshake: type 1 (ClientHello), 3-byte length, client version (2), random (32).
  if (b[p] !== 1) return NONE;
  p += 4 + 2 + 32;
  const skip = (lenBytes: 1 | 2): boolean => {
    if (p + lenBytes > end) return false;
    const n = lenBytes === 1 ? b[p]! : b.readUInt16BE(p);
    p += lenBytes + n;
    return p <= end;
  };
  if (!skip(1) || !skip(2) || !skip(1)) return NONE; // session id, cipher suites, compression methods
  if (p + 2 > end) return NONE;
  const extEnd = Math.min(end, p + 2 + b.readUInt16BE(p));
  p += 2;
  while (p + 4 <= extEnd) {
    const type = b.readUInt16BE(p);
    const len = b.readUInt16BE(p + 2);
    p += 4;
    if (p + len > extEnd) return NONE;
    if (type === 0) {
      // server_name_list: 2-byte length, then entries of type (1), length (2), name.
      let q = p + 2;
      while (q + 3 <= p + len) {
        const nameType = b[q]!;
        const nameLen = b.readUInt16BE(q + 1);
        q += 3;
        if (q + nameLen > p + len) return NONE;
        if (nameType === 0) return named(b.subarray(q, q + nameLen).toString('latin1'));
        q += nameLen;
      }
      return NONE;
    }
    p += len;
  }
  return NONE;
}

/** Host header of an HTTP/1 request (the request line and headers, up to the blank line). */
function httpHost(b: Buffer): ServerName {
  const head = b.subarray(0, 16384).toString('latin1');
  if (!/^[A-Z]{3,10} /.test(head)) return head.length < 11 && /^[A-Z]*$/.test(head) ? MORE : NONE;
  const endOfHeaders = head.indexOf('\r\n\r\n');
  const m = /\r\nhost:[ \t]*([^\r\n]*)/i.exec(endOfHeaders >= 0 ? head.slice(0, endOfHeaders + 2) : head);
  if (m && (endOfHeaders >= 0 || head.slice(m.index + 2).includes('\r\n')))
    return named(m[1]!.trim().replace(/:\d+$/, ''));
  return endOfHeaders >= 0 ? NONE : MORE;
}

function named(name: string): ServerName {
  const n = name.toLowerCase().replace(/\.$/, '');
  return /^[a-z0-9._-]{1,253}$/.test(n) ? { kind: 'name', name: n } : NONE;
}
