import fs from 'node:fs';
import { ForkdError } from '../util/errors.js';

/**
 * Memory diffs: the guest pages a child changed relative to the memory file it maps MAP_PRIVATE.
 *
 * A child's private (copy-on-write) pages are exactly those that /proc/PID/pagemap reports present
 * (bit 63) and not file-backed (bit 61): everything else still reads from the parent's file. So
 * "parent file + these pages" is the child's RAM, byte for byte (spike-branch §4.6), and the pages can
 * be read through /proc/PID/mem while the VM is stopped, without streaming the whole RAM.
 *
 * File format (little endian): "FKDDIFF1", u64 logical size, u32 page size, u32 run count, then per run
 * u64 first page + u32 page count, then the runs' page data in order.
 */
const MAGIC = Buffer.from('FKDDIFF1');
const PAGE = 4096;
const MAX_RUN_PAGES = 256;

export interface DiffStats {
  pages: number;
  runs: number;
  bytes: number;
  pagemapMs: number;
  copyMs: number;
}

/**
 * Find the guest-RAM mapping of `memoryFile` in a QEMU process: by device and inode, not by path (a
 * jailed QEMU's mappings show the path under its own root, vmm/jail.ts).
 */
export function findRamMapping(pid: number, memoryFile: string): { start: number; size: number } {
  const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  const st = fs.statSync(memoryFile, { bigint: true });
  // glibc's dev_t: major bits 8-19 (and 32+), minor bits 0-7 and 20-31 (and 44+); maps prints both in hex.
  const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn);
  const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn);
  const dev = `${hex2(major)}:${hex2(minor)}`;
  let best: { start: number; size: number } | undefined;
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s+(.*)$/.exec(line);
    if (!m || m[5] !== dev || BigInt(m[6]!) !== st.ino || Number.parseInt(m[4]!, 16) !== 0) continue;
    const start = Number.parseInt(m[1]!, 16);
    const size = Number.parseInt(m[2]!, 16) - start;
    if (!best || size > best.size) best = { start, size };
  }
  if (!best)
    throw new ForkdError('vmm_failed', `no mapping of ${memoryFile} in process ${pid}; cannot take a diff`);
  return best;
}

function hex2(n: bigint): string {
  return n.toString(16).padStart(2, '0');
}

/** Extract the private pages of `pid`'s mapping of `memoryFile` into a diff file. The VM must be stopped. */
export function extractDiff(pid: number, memoryFile: string, out: string): DiffStats {
  const t0 = performance.now();
  const { start, size } = findRamMapping(pid, memoryFile);
  const npages = Math.floor(size / PAGE);
  const pm = fs.openSync(`/proc/${pid}/pagemap`, 'r');
  const entries = Buffer.alloc(npages * 8);
  try {
    let got = 0;
    while (got < entries.length) {
      const n = fs.readSync(pm, entries, got, entries.length - got, (start / PAGE) * 8 + got);
      if (n <= 0) break;
      got += n;
    }
  } finally {
    fs.closeSync(pm);
  }
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < npages; i++) {
    const hi = entries.readUInt32LE(i * 8 + 4);
    const privatePage = (hi & 0x80000000) !== 0 && (hi & 0x20000000) === 0;
    if (!privatePage) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === i && last[1] < MAX_RUN_PAGES) last[1]++;
    else runs.push([i, 1]);
  }
  const tPagemap = performance.now();
  const header = Buffer.alloc(24 + runs.length * 12);
  MAGIC.copy(header, 0);
  header.writeBigUInt64LE(BigInt(npages * PAGE), 8);
  header.writeUInt32LE(PAGE, 16);
  header.writeUInt32LE(runs.length, 20);
  runs.forEach(([p, c], k) => {
    header.writeBigUInt64LE(BigInt(p), 24 + k * 12);
    header.writeUInt32LE(c, 32 + k * 12);
  });
  const mem = fs.openSync(`/proc/${pid}/mem`, 'r');
  const fd = fs.openSync(out, 'w', 0o644);
  let pages = 0;
  try {
    fs.writeSync(fd, header);
    const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE);
    for (const [p, c] of runs) {
      const len = c * PAGE;
      let got = 0;
      while (got < len) {
        const n = fs.readSync(mem, buf, got, len - got, start + p * PAGE + got);
        if (n <= 0) throw new ForkdError('vmm_failed', `short read of guest RAM at page ${p}`);
        got += n;
      }
      fs.writeSync(fd, buf, 0, len);
      pages += c;
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(mem);
    fs.closeSync(fd);
  }
  return {
    pages,
    runs: runs.length,
    bytes: pages * PAGE,
    pagemapMs: tPagemap - t0,
    copyMs: performance.now() - tPagemap,
  };
}

export interface DiffHeader {
  logicalSize: number;
  runs: Array<[number, number]>;
  dataOffset: number;
}

/**
 * Read and validate a diff's header. A diff may come from an unpacked pack, so nothing in it is trusted:
 * the page size, every run's bounds and order, and the file's exact length are checked before a single
 * page is written anywhere, and every failure is a named corrupt_snapshot error.
 */
export function readDiffHeader(file: string): DiffHeader {
  const fd = fs.openSync(file, 'r');
  try {
    const fileSize = fs.fstatSync(fd).size;
    const bad = (why: string) => new ForkdError('corrupt_snapshot', `memory diff ${file} is corrupt: ${why}`);
    const head = Buffer.alloc(24);
    if (fs.readSync(fd, head, 0, 24, 0) !== 24 || !head.subarray(0, 8).equals(MAGIC))
      throw new ForkdError('corrupt_snapshot', `${file} is not a forkd memory diff`);
    const logicalSize = Number(head.readBigUInt64LE(8));
    const pageSize = head.readUInt32LE(16);
    const count = head.readUInt32LE(20);
    if (pageSize !== PAGE) throw bad(`page size ${pageSize}, expected ${PAGE}`);
    if (!Number.isSafeInteger(logicalSize) || logicalSize <= 0 || logicalSize % PAGE !== 0)
      throw bad(`memory size ${logicalSize} is not a positive multiple of ${PAGE}`);
    // The table must fit in the file before it is allocated: a forged count cannot claim gigabytes.
    if (24 + count * 12 > fileSize) throw bad(`run table of ${count} runs is longer than the file`);
    const table = Buffer.alloc(count * 12);
    if (fs.readSync(fd, table, 0, table.length, 24) !== table.length) throw bad('truncated run table');
    const totalPages = logicalSize / PAGE;
    const runs: Array<[number, number]> = [];
    let nextFree = 0;
    let dataPages = 0;
    for (let k = 0; k < count; k++) {
      const first = Number(table.readBigUInt64LE(k * 12));
      const n = table.readUInt32LE(k * 12 + 8);
      if (n < 1 || n > MAX_RUN_PAGES) throw bad(`run ${k} has ${n} pages (1..${MAX_RUN_PAGES} allowed)`);
      if (first < nextFree) throw bad(`run ${k} overlaps or is out of order`);
      if (first + n > totalPages) throw bad(`run ${k} ends past the ${logicalSize}-byte memory`);
      nextFree = first + n;
      dataPages += n;
      runs.push([first, n]);
    }
    const dataOffset = 24 + table.length;
    if (dataOffset + dataPages * PAGE !== fileSize)
      throw bad(`${fileSize} bytes, but its runs need ${dataOffset + dataPages * PAGE}`);
    return { logicalSize, runs, dataOffset };
  } finally {
    fs.closeSync(fd);
  }
}

/** Write a diff's pages into `target` (a copy of the parent's memory file) at their offsets. */
export function applyDiff(diff: string, target: string): number {
  const h = readDiffHeader(diff);
  const st = fs.statSync(target);
  if (st.size !== h.logicalSize)
    throw new ForkdError(
      'corrupt_snapshot',
      `memory diff ${diff} is for a ${h.logicalSize}-byte memory, but its parent's is ${st.size} bytes`,
    );
  const src = fs.openSync(diff, 'r');
  const dst = fs.openSync(target, 'r+');
  let off = h.dataOffset;
  let pages = 0;
  try {
    const buf = Buffer.alloc(MAX_RUN_PAGES * PAGE);
    for (const [p, c] of h.runs) {
      const len = c * PAGE;
      if (fs.readSync(src, buf, 0, len, off) !== len)
        throw new ForkdError('corrupt_snapshot', `memory diff ${diff} is truncated`);
      fs.writeSync(dst, buf, 0, len, p * PAGE);
      off += len;
      pages += c;
    }
    fs.fsyncSync(dst);
  } finally {
    fs.closeSync(src);
    fs.closeSync(dst);
  }
  return pages;
}
