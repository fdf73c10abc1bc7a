/**
 * Signed file URLs (`sandbox.uploadUrl()` / `downloadUrl()`): `signature=v1_<base64(sha256(
 * "<path>:<read|write>:<user>:<token>[:<expiry>]"))>` without padding, in place of the access token.
 * The SDK signs the path and user exactly as passed (an absent user is the empty string).
 */
import { createHash } from 'node:crypto';
import { sameSecret } from '../auth.js';

export function fileSignature(
  path: string,
  op: 'read' | 'write',
  user: string | undefined,
  token: string,
  expiry?: number,
): string {
  const raw = `${path}:${op}:${user ?? ''}:${token}${expiry === undefined ? '' : `:${expiry}`}`;
  return 'v1_' + createHash('sha256').update(raw).digest('base64').replace(/=+$/, '');
}

/** Whether the query's signature is valid for `token` now; `why` says what is wrong when it is not. */
export function checkFileSignature(
  query: URLSearchParams,
  op: 'read' | 'write',
  token: string,
  nowS = Math.floor(Date.now() / 1000),
): { ok: true } | { ok: false; why: string } {
  const sig = query.get('signature') ?? '';
  const expRaw = query.get('signature_expiration');
  const expiry = expRaw === null ? undefined : Number(expRaw);
  if (expiry !== undefined && !Number.isInteger(expiry))
    return { ok: false, why: 'signature_expiration is not a number' };
  const user = query.get('username') ?? undefined;
  const expected = fileSignature(query.get('path') ?? '', op, user, token, expiry);
  if (!sameSecret(sig, expected))
    return { ok: false, why: `invalid signature for ${op} of this path and user` };
  if (expiry !== undefined && expiry < nowS) return { ok: false, why: 'the signed URL has expired' };
  return { ok: true };
}
