/** Pure parts of the E2B API (src/controller/e2b/): what the SDK encodes, signs and expects back. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { getSignature } from 'e2b';
import { parseMetadataQuery } from '../../src/controller/e2b/list-query.js';
import { checkFileSignature, fileSignature } from '../../src/controller/e2b/file-signature.js';
import { permissionsText } from '../../src/controller/e2b/envd-filesystem.js';
import { basicUser } from '../../src/controller/e2b/sandbox-plane.js';
import { guestPath } from '../../src/controller/e2b/envd-http.js';
import { portTarget } from '../../src/controller/e2b/port-proxy.js';

describe('E2B wire details', () => {
  it("decodes the list call's metadata filter as the SDK encodes it", () => {
    // The SDK: encodeURIComponent on keys and values, joined as a form; the query layer decodes once.
    const sdk = new URLSearchParams({ 'odd key': 'v w', role: 'a&b=c' });
    const inner = [...sdk].map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
    const onTheWire = new URLSearchParams({ metadata: inner }).toString();
    const afterQueryParse = new URLSearchParams(onTheWire).get('metadata')!;
    assert.deepEqual(parseMetadataQuery(afterQueryParse), [
      ['odd key', 'v w'],
      ['role', 'a&b=c'],
    ]);
    assert.deepEqual(parseMetadataQuery('k=100%'), [['k', '100%']], 'a stray % is literal');
  });

  it('checks file URL signatures exactly as the SDK makes them, expiry included', async () => {
    const token = 'tok-123';
    for (const [user, exp] of [
      [undefined, undefined],
      ['user', 60],
    ] as const) {
      const sig = await getSignature({
        path: 'a/b.txt',
        operation: 'read',
        user,
        envdAccessToken: token,
        ...(exp ? { expirationInSeconds: exp } : {}),
      });
      assert.equal(sig.signature, fileSignature('a/b.txt', 'read', user, token, sig.expiration ?? undefined));
      const q = new URLSearchParams({ path: 'a/b.txt', signature: sig.signature });
      if (user) q.set('username', user);
      if (sig.expiration) q.set('signature_expiration', String(sig.expiration));
      assert.deepEqual(checkFileSignature(q, 'read', token), { ok: true });
      assert.equal(checkFileSignature(q, 'write', token).ok, false, 'a read signature does not write');
      assert.equal(checkFileSignature(q, 'read', 'other').ok, false);
      if (sig.expiration)
        assert.deepEqual(checkFileSignature(q, 'read', token, sig.expiration + 1), {
          ok: false,
          why: 'the signed URL has expired',
        });
    }
  });

  it('reads the sandbox port a Host header names, and nothing else', () => {
    assert.deepEqual(portTarget('8000-sb-0123456789abcdef.e2b.app'), {
      port: 8000,
      id: 'sb-0123456789abcdef',
    });
    assert.deepEqual(portTarget('49999-SB-AB.localhost:8889'), { port: 49999, id: 'sb-ab' });
    assert.equal(portTarget('127.0.0.1:8889'), undefined);
    assert.equal(portTarget('70000-sb-1.x'), undefined);
    assert.equal(portTarget('8000-sb-1'), undefined, 'a domain is part of the name');
    assert.equal(portTarget(undefined), undefined);
  });

  it('permission text, Basic-auth users and relative paths', () => {
    assert.equal(permissionsText('file', 0o644), '-rw-r--r--');
    assert.equal(permissionsText('dir', 0o755), 'drwxr-xr-x');
    assert.equal(permissionsText('symlink', 0o777), 'lrwxrwxrwx');
    assert.equal(basicUser(`Basic ${Buffer.from('root:').toString('base64')}`), 'root');
    assert.equal(basicUser(`Basic ${Buffer.from('../etc:').toString('base64')}`), undefined);
    assert.equal(basicUser(undefined), undefined);
    assert.equal(guestPath('proj/a.txt', 'user'), '/home/user/proj/a.txt');
    assert.equal(
      guestPath('../../etc/passwd', 'user'),
      '/etc/passwd',
      'paths are the guest’s: the user may name any',
    );
    assert.equal(guestPath('x', 'root'), '/root/x');
    assert.equal(guestPath('', 'user'), undefined);
  });
});
