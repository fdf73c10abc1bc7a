import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { applyDiff, readDiffHeader } from '../../src/snapshot/memdiff.js';
import { ForkdError } from '../../src/util/errors.js';

const PAGE = 4096;

/** A diff file laid out as memdiff.ts writes it, with every field open to forgery. */
function craft(opts: {
  logical?: bigint;
  pageSize?: number;
  count?: number;
  runs: Array<[bigint, number]>;
  dataPages?: number;
  fill?: number;
}): Buffer {
  const head = Buffer.alloc(24 + opts.runs.length * 12);
  Buffer.from('FKDDIFF1').copy(head, 0);
  head.writeBigUInt64LE(opts.logical ?? BigInt(16 * PAGE), 8);
  head.writeUInt32LE(opts.pageSize ?? PAGE, 16);
  head.writeUInt32LE(opts.count ?? opts.runs.length, 20);
  opts.runs.forEach(([p, c], k) => {
    head.writeBigUInt64LE(p, 24 + k * 12);
    head.writeUInt32LE(c, 32 + k * 12);
  });
  const pages = opts.dataPages ?? opts.runs.reduce((a, [, c]) => a + c, 0);
  return Buffer.concat([head, Buffer.alloc(pages * PAGE, opts.fill ?? 0xab)]);
}

describe('memory diff files are untrusted input', () => {
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-memdiff-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const target = () => {
    const t = path.join(dir, 'target.bin');
    fs.writeFileSync(t, Buffer.alloc(16 * PAGE, 0));
    return t;
  };

  it('applies a valid diff at its page offsets', () => {
    const d = path.join(dir, 'ok.diff');
    fs.writeFileSync(
      d,
      craft({
        runs: [
          [2n, 1],
          [5n, 2],
        ],
      }),
    );
    const t = target();
    assert.equal(applyDiff(d, t), 3);
    const out = fs.readFileSync(t);
    assert.equal(out[2 * PAGE], 0xab);
    assert.equal(out[3 * PAGE], 0);
    assert.equal(out[6 * PAGE + PAGE - 1], 0xab);
    assert.equal(out.length, 16 * PAGE);
  });

  const hostile: Array<[string, Parameters<typeof craft>[0], RegExp]> = [
    ['a run past the end of memory', { runs: [[15n, 2]] }, /ends past/],
    ['a run starting far past the end', { runs: [[1n << 40n, 1]] }, /ends past/],
    [
      'a run longer than the writer ever makes',
      { runs: [[0n, 257]], logical: BigInt(1024 * PAGE) },
      /257 pages/,
    ],
    ['an empty run', { runs: [[0n, 0]] }, /0 pages/],
    [
      'overlapping runs',
      {
        runs: [
          [4n, 2],
          [5n, 1],
        ],
      },
      /overlaps/,
    ],
    ['a forged run count of 4 billion', { runs: [[0n, 1]], count: 0xffffffff }, /longer than the file/],
    ['another page size', { runs: [[0n, 1]], pageSize: 65536 }, /page size/],
    ['a memory size that is not whole pages', { runs: [], logical: 1000n }, /multiple/],
    ['missing page data', { runs: [[0n, 3]], dataPages: 2 }, /runs need/],
    ['trailing bytes', { runs: [[0n, 1]], dataPages: 2 }, /runs need/],
  ];
  for (const [name, spec, why] of hostile)
    it(`refuses ${name}, leaving the target untouched`, () => {
      const d = path.join(dir, 'bad.diff');
      fs.writeFileSync(d, craft(spec));
      const t = target();
      const beforeBytes = fs.readFileSync(t);
      assert.throws(
        () => applyDiff(d, t),
        (e: unknown) => e instanceof ForkdError && e.code === 'corrupt_snapshot' && why.test(e.message),
      );
      assert.ok(fs.readFileSync(t).equals(beforeBytes));
    });

  it('refuses a diff for another memory size and a file that is no diff', () => {
    const d = path.join(dir, 'size.diff');
    fs.writeFileSync(d, craft({ runs: [[0n, 1]], logical: BigInt(32 * PAGE) }));
    assert.throws(() => applyDiff(d, target()), /32-byte memory|131072-byte memory/);
    fs.writeFileSync(d, 'not a diff at all, just text that is long enough');
    assert.throws(() => readDiffHeader(d), /not a forkd memory diff/);
  });
});
