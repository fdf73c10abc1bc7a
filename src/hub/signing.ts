import fs from 'node:fs';
import path from 'node:path';
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { z } from 'zod';
import { ForkdError } from '../util/errors.js';
import { configDir } from '../util/paths.js';
import { listDir } from '../util/fs.js';

/**
 * Pack authenticity (the reference has integrity only): Ed25519 over the exact manifest.toml bytes. The
 * manifest pins every file by sha256, so one signature covers the whole pack. Trust is a directory of
 * public keys; a key is named by the first 16 hex digits of the sha256 of its raw 32 bytes.
 */
export const Signature = z.object({
  algorithm: z.literal('ed25519'),
  key_id: z.string().regex(/^[0-9a-f]{16}$/),
  /** raw public key, base64: lets a verifier say which key signed even when it does not trust it */
  public_key: z.string().max(100),
  signature: z.string().max(200),
});
export type Signature = z.infer<typeof Signature>;

export function keysDir(): string {
  return path.join(configDir(), 'keys');
}
export function trustedDir(): string {
  return path.join(configDir(), 'trusted');
}

function rawPublic(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || !jwk.x) throw new ForkdError('bad_input', 'not an Ed25519 key');
  return Buffer.from(jwk.x, 'base64url');
}

export function keyIdOf(key: KeyObject): string {
  return createHash('sha256').update(rawPublic(key)).digest('hex').slice(0, 16);
}

function publicFromRaw(raw: Buffer): KeyObject {
  return createPublicKey({
    key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
    format: 'jwk',
  });
}

export interface GeneratedKey {
  keyId: string;
  privatePath: string;
  publicPath: string;
}

/** A new signing key under keys/<name>.key (0600) + .pub; its public half is trusted here at once. */
export function generateKey(name: string, force = false): GeneratedKey {
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/.test(name))
    throw new ForkdError(
      'bad_input',
      `invalid key name '${name}'`,
      'use letters, digits, ., _ or -, e.g. --name release',
    );
  const privatePath = path.join(keysDir(), `${name}.key`);
  const publicPath = path.join(keysDir(), `${name}.pub`);
  if (fs.existsSync(privatePath) && !force)
    throw new ForkdError(
      'exists',
      `a key named '${name}' already exists at ${privatePath}`,
      'pick another --name, or pass --force to replace it (packs signed with the old key will no longer verify against it)',
    );
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  fs.mkdirSync(keysDir(), { recursive: true, mode: 0o700 });
  fs.writeFileSync(privatePath, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  fs.chmodSync(privatePath, 0o600);
  fs.writeFileSync(publicPath, publicKey.export({ format: 'pem', type: 'spki' }));
  const keyId = keyIdOf(publicKey);
  trustKey(publicPath);
  return { keyId, privatePath, publicPath };
}

function readKey(file: string, kind: 'private' | 'public'): KeyObject {
  let pem: string;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch {
    throw new ForkdError('not_found', `cannot read ${kind} key ${file}`, "create one with 'forkd keygen'");
  }
  try {
    const k = kind === 'private' ? createPrivateKey(pem) : createPublicKey(pem);
    if (k.asymmetricKeyType !== 'ed25519') throw new Error(`a ${k.asymmetricKeyType} key`);
    return k;
  } catch (e) {
    throw new ForkdError(
      'bad_input',
      `${file} is not an Ed25519 ${kind} key in PEM form (${(e as Error).message})`,
      "make one with 'forkd keygen'",
    );
  }
}

/** Resolve --sign: a key name under keys/, or a path to a PEM private key. */
export function signingKeyPath(nameOrPath: string): string {
  if (nameOrPath.includes('/') || nameOrPath.endsWith('.key') || nameOrPath.endsWith('.pem'))
    return nameOrPath;
  return path.join(keysDir(), `${nameOrPath}.key`);
}

export function signManifest(manifest: Buffer, privateKeyFile: string): Signature {
  const priv = readKey(privateKeyFile, 'private');
  const pub = createPublicKey(priv);
  return {
    algorithm: 'ed25519',
    key_id: keyIdOf(pub),
    public_key: rawPublic(pub).toString('base64'),
    signature: sign(null, manifest, priv).toString('base64'),
  };
}

/** Add a public key to the trusted set; returns its key id. */
export function trustKey(publicFile: string): string {
  const key = readKey(publicFile, 'public');
  const id = keyIdOf(key);
  fs.mkdirSync(trustedDir(), { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(trustedDir(), `${id}.pub`), key.export({ format: 'pem', type: 'spki' }));
  return id;
}

export function untrustKey(keyId: string): void {
  if (!/^[0-9a-f]{16}$/.test(keyId))
    throw new ForkdError('bad_input', `'${keyId}' is not a key id`, "list them with 'forkd trust list'");
  const f = path.join(trustedDir(), `${keyId}.pub`);
  if (!fs.existsSync(f)) throw new ForkdError('not_found', `key ${keyId} is not trusted`);
  fs.rmSync(f);
}

/** Trusted keys: the trusted dir plus any extra public key files given for one command. */
export function trustedKeys(extraFiles: string[] = []): Map<string, KeyObject> {
  const out = new Map<string, KeyObject>();
  const names = listDir(trustedDir()).filter((f) => f.endsWith('.pub'));
  for (const f of [...names.map((n) => path.join(trustedDir(), n)), ...extraFiles]) {
    const k = readKey(f, 'public');
    out.set(keyIdOf(k), k);
  }
  return out;
}

export type SignatureStatus =
  { state: 'unsigned' } | { state: 'trusted'; keyId: string } | { state: 'untrusted'; keyId: string };

export interface VerifyPolicy {
  trusted: Map<string, KeyObject>;
  /** refuse packs that are unsigned or signed by a key that is not trusted */
  requireSigned?: boolean;
  /** refuse unless signed by exactly this key (a registry entry's signer) */
  expectedKeyId?: string;
}

/**
 * Check a pack's signature against the policy. A signature that does not verify is always fatal: the
 * manifest (and so some file) was changed after signing.
 */
export function verifyManifest(
  manifest: Buffer,
  sigBytes: Buffer | undefined,
  policy: VerifyPolicy,
): SignatureStatus {
  if (!sigBytes) {
    if (policy.requireSigned || policy.expectedKeyId)
      throw new ForkdError(
        'untrusted',
        `the pack is not signed${policy.expectedKeyId ? ` (its registry entry expects key ${policy.expectedKeyId})` : ''}`,
        'ask the publisher for a signed pack, or drop --require-signed to accept unsigned packs',
      );
    return { state: 'unsigned' };
  }
  let sig: Signature;
  try {
    sig = Signature.parse(JSON.parse(sigBytes.toString('utf8')));
  } catch {
    throw new ForkdError(
      'untrusted',
      'manifest.sig is malformed',
      'the pack is damaged or was tampered with',
    );
  }
  const raw = Buffer.from(sig.public_key, 'base64');
  let embedded: KeyObject;
  try {
    embedded = publicFromRaw(raw);
  } catch {
    throw new ForkdError('untrusted', 'manifest.sig carries an invalid public key');
  }
  if (keyIdOf(embedded) !== sig.key_id)
    throw new ForkdError(
      'untrusted',
      'manifest.sig: key id does not match its public key',
      'the pack was tampered with',
    );
  const key = policy.trusted.get(sig.key_id) ?? embedded;
  if (!verify(null, manifest, key, Buffer.from(sig.signature, 'base64')))
    throw new ForkdError(
      'untrusted',
      `signature check failed: manifest.toml was modified after it was signed by key ${sig.key_id}`,
      'do not use this pack; fetch it again from its publisher',
    );
  if (policy.expectedKeyId && sig.key_id !== policy.expectedKeyId)
    throw new ForkdError(
      'untrusted',
      `the pack is signed by key ${sig.key_id}, but its registry entry names signer ${policy.expectedKeyId}`,
      'the pack was replaced; do not use it',
    );
  if (policy.trusted.has(sig.key_id)) return { state: 'trusted', keyId: sig.key_id };
  if (policy.requireSigned)
    throw new ForkdError(
      'untrusted',
      `the pack is signed by key ${sig.key_id}, which is not trusted here`,
      'if you trust its publisher, add their public key: forkd trust add KEY.pub (or pass --trusted-key KEY.pub)',
    );
  return { state: 'untrusted', keyId: sig.key_id };
}
