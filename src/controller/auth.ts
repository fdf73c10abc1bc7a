import fs from 'node:fs';
import { createHash, timingSafeEqual } from 'node:crypto';
import { ForkdError } from '../util/errors.js';

/** Read and sanity-check the bearer token file (trimmed; placeholders and short tokens refused). */
export function loadToken(file: string): string {
  let t: string;
  try {
    t = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new ForkdError('not_found', `cannot read --token-file ${file}: ${(e as Error).message}`);
  }
  if (!t)
    throw new ForkdError(
      'bad_input',
      `token file ${file} is empty`,
      'put a random secret in it, e.g. openssl rand -base64 32',
    );
  if (/^(REPLACE_ME|CHANGE_ME)/i.test(t))
    throw new ForkdError(
      'bad_input',
      `token file ${file} still holds a placeholder`,
      'replace it with a random secret',
    );
  if (Buffer.byteLength(t) < 16)
    throw new ForkdError(
      'bad_input',
      `token in ${file} is shorter than 16 bytes`,
      'use a longer random secret',
    );
  return t;
}

/**
 * Constant-time check of an `Authorization: Bearer` header. Both sides are hashed first, so neither
 * the comparison time nor an early length mismatch tells anything about the token.
 */
export function checkBearer(header: string | undefined, token: string): 'ok' | 'missing' | 'invalid' {
  if (!header || !header.startsWith('Bearer ') || !header.slice(7).trim()) return 'missing';
  return sameSecret(header.slice(7).trim(), token) ? 'ok' : 'invalid';
}

/** Constant-time equality of a secret someone sent and ours (both hashed first: lengths leak nothing). */
export function sameSecret(given: string, ours: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(ours).digest();
  return timingSafeEqual(a, b);
}
