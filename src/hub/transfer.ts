import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { ForkdError } from '../util/errors.js';
import { freeBytes } from '../util/fs.js';
import { hashingStream } from '../util/hash.js';
import type { Reporter } from '../util/report.js';

export interface TransferResult {
  bytes: number;
  sha256: string;
  ms: number;
}

/** Hash and count what passes through, reporting progress. */
function meter(label: string, total: number | undefined, rep: Reporter) {
  return hashingStream((_n, done) => rep.progress(label, done, total));
}

/** Never print a presigned URL's query (it is a credential). */
export function redactUrl(u: string): string {
  try {
    const x = new URL(u);
    return `${x.origin}${x.pathname}${x.search ? '?…' : ''}`;
  } catch {
    return u;
  }
}

/**
 * GET a pack into `dest` (streamed, hashed on the way). `expectedSha256` is checked before the caller
 * gets to unpack; on any failure `dest` is removed.
 */
export async function download(
  url: string,
  dest: string,
  rep: Reporter,
  expect: { sha256?: string; size?: number } = {},
): Promise<TransferResult> {
  const t0 = performance.now();
  let body: Readable;
  let total: number | undefined;
  if (url.startsWith('file:')) {
    const p = fileURLToPath(url);
    try {
      total = fs.statSync(p).size;
    } catch {
      throw new ForkdError('not_found', `no such file: ${p}`);
    }
    body = fs.createReadStream(p);
  } else {
    let res: Response;
    try {
      res = await fetch(url, { redirect: 'follow' });
    } catch (e) {
      throw new ForkdError(
        'remote_failed',
        `download from ${redactUrl(url)} failed: ${(e as Error).message}`,
        'check the URL and your network',
      );
    }
    if (res.status !== 200 || !res.body)
      throw new ForkdError(
        'remote_failed',
        `download from ${redactUrl(url)} answered HTTP ${res.status}`,
        'check the URL (presigned URLs expire)',
      );
    const len = Number(res.headers.get('content-length'));
    total = Number.isFinite(len) && len > 0 ? len : expect.size;
    body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
  }
  if (total !== undefined && total + (64 << 20) > freeBytes(dest))
    throw new ForkdError(
      'out_of_space',
      `the download needs ${total} bytes; not enough free space for ${dest}`,
      'free disk space and retry',
    );
  const m = meter('downloading', total, rep);
  try {
    await pipeline(body, m.stream, fs.createWriteStream(dest, { flags: 'wx', mode: 0o600 }));
    const sha = m.digest();
    if (expect.size !== undefined && m.bytes() !== expect.size)
      throw new ForkdError(
        'bad_pack',
        `downloaded ${m.bytes()} bytes but the registry says ${expect.size}`,
        'the pack is incomplete or was replaced; do not use it',
      );
    if (expect.sha256 && sha !== expect.sha256.toLowerCase())
      throw new ForkdError(
        'bad_pack',
        `sha256 mismatch: the registry says ${expect.sha256.toLowerCase()}, the download is ${sha}. Refusing to unpack`,
        'the pack was corrupted in transit or replaced; try again, and tell the publisher if it persists',
      );
    return { bytes: m.bytes(), sha256: sha, ms: performance.now() - t0 };
  } catch (e) {
    fs.rmSync(dest, { force: true });
    if (e instanceof ForkdError) throw e;
    throw new ForkdError(
      'remote_failed',
      `download from ${redactUrl(url)} failed: ${(e as Error).message}`,
      'retry',
    );
  }
}

/** HTTP PUT a file (presigned S3/R2 style: Content-Length, no auth header), streamed with progress. */
export async function upload(file: string, url: string, rep: Reporter): Promise<TransferResult> {
  const t0 = performance.now();
  const size = fs.statSync(file).size;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ForkdError(
      'bad_input',
      `'${url}' is not a URL`,
      'pass an http(s) PUT URL, e.g. a presigned S3/R2 URL',
    );
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new ForkdError(
      'bad_input',
      `push needs an http(s) URL (got ${u.protocol})`,
      'pass a presigned PUT URL',
    );
  const m = meter('uploading', size, rep);
  const mod = u.protocol === 'https:' ? https : http;
  const status = await new Promise<{ code: number; body: string }>((resolve, reject) => {
    const req = mod.request(u, { method: 'PUT', headers: { 'content-length': String(size) } }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body = (body + d).slice(0, 2000)));
      res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    pipeline(fs.createReadStream(file, { highWaterMark: 1 << 20 }), m.stream, req).catch(reject);
  }).catch((e: unknown) => {
    throw new ForkdError(
      'remote_failed',
      `upload to ${redactUrl(url)} failed: ${(e as Error).message}`,
      'check the URL and your network',
    );
  });
  if (status.code < 200 || status.code >= 300)
    throw new ForkdError(
      'remote_failed',
      `upload to ${redactUrl(url)} answered HTTP ${status.code}${status.body ? `: ${status.body.trim().slice(0, 200)}` : ''}`,
      'presigned URLs expire and are bound to the method (PUT); make a fresh one',
    );
  return { bytes: size, sha256: m.digest(), ms: performance.now() - t0 };
}
