/**
 * The server name a connection's first bytes ask for (network/server-name.ts), which the egress proxy
 * checks against the policy: a real TLS ClientHello (made by the host's Python ssl module), HTTP/1
 * requests, every truncation of them, and bytes that are neither.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { serverName } from '../../src/network/server-name.js';

function clientHello(sni: string): Buffer {
  const py = `import ssl, sys
o = ssl.MemoryBIO()
t = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), o, server_hostname=sys.argv[1])
try: t.do_handshake()
except ssl.SSLWantReadError: pass
sys.stdout.buffer.write(o.read())`;
  return execFileSync('python3', ['-c', py, sni]);
}

describe('server name of a connection (TLS SNI, HTTP Host)', () => {
  it('reads the SNI of a real ClientHello, and asks for more until it is complete', () => {
    const hello = clientHello('files.PyPI.org');
    assert.deepEqual(serverName(hello), { kind: 'name', name: 'files.pypi.org' });
    for (const cut of [0, 1, 4, 5, 40, hello.length - 1])
      assert.deepEqual(serverName(hello.subarray(0, cut)), { kind: 'more' }, `cut ${cut}`);
  });

  it('reads the Host header of an HTTP/1 request, without its port', () => {
    const req = Buffer.from('GET /x HTTP/1.1\r\nUser-Agent: t\r\nhOsT: a.test:8080\r\nAccept: */*\r\n\r\n');
    assert.deepEqual(serverName(req), { kind: 'name', name: 'a.test' });
    assert.deepEqual(serverName(req.subarray(0, 20)), { kind: 'more' });
    assert.deepEqual(serverName(Buffer.from('GE')), { kind: 'more' });
    assert.deepEqual(serverName(Buffer.from('GET / HTTP/1.0\r\n\r\n')), { kind: 'none' }, 'no Host');
  });

  it('bytes that are neither, or a malformed name, name nothing', () => {
    assert.deepEqual(serverName(Buffer.from('hello\r\n\r\n')), { kind: 'none' });
    assert.deepEqual(serverName(Buffer.from('SSH-2.0-OpenSSH\r\n')), { kind: 'none' });
    assert.deepEqual(serverName(Buffer.from('GET / HTTP/1.1\r\nHost: a b\r\n\r\n')), { kind: 'none' });
    const hello = clientHello('a.test');
    const bad = Buffer.from(hello);
    bad[5] = 2; // not a ClientHello
    assert.deepEqual(serverName(bad), { kind: 'none' });
    const lying = Buffer.from(hello);
    lying.writeUInt16BE(0xffff, 5 + 4 + 2 + 32 + 1 + lying[5 + 4 + 2 + 32]!); // cipher suites longer than the record
    assert.deepEqual(serverName(lying), { kind: 'none' });
  });
});
