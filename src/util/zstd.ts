import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { ForkdError } from '../util/errors.js';

/**
 * zstd through the host's `zstd` binary (a declared host requirement). Node 20 has no zstd in zlib and
 * the npm zstd bindings are buffer-only, which would break the flat-memory promise for multi-GiB packs;
 * the binary streams, uses every core (-T0) and is what users already have for .tar.zst files.
 */
export interface ZstdProcess {
  /** Where to write input (compress: tar bytes; decompress: unused when `input` is a file descriptor). */
  stdin: Writable | null;
  /** Output when it is not sent straight to a file descriptor. */
  stdout: Readable | null;
  /** Resolves when zstd exits 0; rejects with its stderr otherwise. */
  done: Promise<void>;
  kill(): void;
}

function start(args: string[], stdin: number | 'pipe', stdout: number | 'pipe', what: string): ZstdProcess {
  const child: ChildProcess = spawn('zstd', args, { stdio: [stdin, stdout, 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d.slice(0, 4000)));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'ENOENT'
          ? new ForkdError('host_unsupported', "'zstd' is not installed", 'run: forkd setup --yes')
          : e,
      ),
    );
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(
          new ForkdError(
            'bad_pack',
            `${what} failed (zstd exit ${code ?? signal}): ${stderr.trim().split('\n').pop() ?? ''}`,
            what.startsWith('decompress')
              ? 'the file is not a complete .tar.zst pack; download or copy it again'
              : undefined,
          ),
        );
    });
  });
  done.catch(() => {});
  return { stdin: child.stdin, stdout: child.stdout, done, kill: () => child.kill('SIGKILL') };
}

/** Compress what is written to `stdin` into the open file `outFd`. */
export function zstdCompressTo(outFd: number, level = 3): ZstdProcess {
  return start(['-q', '-c', `-${level}`, '-T0'], 'pipe', outFd, 'compressing the pack');
}

/** Decompress the open file `inFd`; read the plain bytes from `stdout`. */
export function zstdDecompressFrom(inFd: number, what = 'decompressing the pack'): ZstdProcess {
  // --long=31 accepts frames written with long-distance matching by other tools.
  return start(['-q', '-d', '-c', '--long=31'], inFd, 'pipe', what);
}
