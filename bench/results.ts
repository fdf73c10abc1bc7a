import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Write one bench run as bench-results/<name>-<time>.json, with the host it ran on; returns the path. */
export function writeBenchResults(name: string, data: Record<string, unknown>): string {
  const dir = path.resolve('bench-results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const host = {
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    mem_gib: Math.round(os.totalmem() / 1024 ** 3),
    kernel: os.release(),
  };
  fs.writeFileSync(file, JSON.stringify({ host, ...data }, null, 2) + '\n');
  return file;
}
