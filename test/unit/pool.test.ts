/**
 * The warm pool's bookkeeping without VMs: the pool is handed its own prepare/discard, so what is tested
 * is which prepared child it hands out, keeps, refills and throws away. (Real prepared children are
 * exercised by the warm-pool test in test/vm/controller.test.ts.)
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { WarmPool, type Prepared } from '../../src/engine/pool.js';
import type { ChildSource } from '../../src/engine/child.js';

function source(tag: string, key = `${tag}:v1`): ChildSource {
  return { s: { tag }, key } as unknown as ChildSource;
}

class Harness {
  made = 0;
  discarded: string[] = [];
  alive = new Set<string>();
  failNext = false;
  readonly logs: string[] = [];
  sources = new Map<string, ChildSource | undefined>();

  pool(perTag: number, maxTotal: number, refillDelayMs = 0): WarmPool {
    return new WarmPool(
      {
        perTag,
        maxTotal,
        refillDelayMs,
        log: (m) => this.logs.push(m),
        prepare: async (src) => {
          if (this.failNext) {
            this.failNext = false;
            throw new Error('no room for another QEMU');
          }
          const id = `p${++this.made}`;
          this.alive.add(id);
          return {
            source: src,
            res: { id },
            pending: { vm: { isAlive: () => this.alive.has(id) } },
          } as unknown as Prepared;
        },
        discard: async (p) => {
          this.discarded.push(p.res.id);
          this.alive.delete(p.res.id);
        },
      },
      async (tag) => this.sources.get(tag),
    );
  }
}

const settle = () => new Promise((r) => setTimeout(r, 20));

describe('warm pool', () => {
  it('starts a refill only after the refill delay, so it does not compete with the child just taken', async () => {
    const h = new Harness();
    h.sources.set('py', source('py'));
    const pool = h.pool(1, 4, 60);
    pool.refill('py');
    await settle();
    assert.deepEqual(pool.sizes(), { py: 1 });
    assert.ok(pool.take(source('py')));
    await settle();
    assert.equal(h.made, 1, 'no refill yet');
    await new Promise((r) => setTimeout(r, 80));
    assert.equal(h.made, 2, 'refilled after the delay');
    assert.deepEqual(pool.sizes(), { py: 1 });
    await pool.close();
  });

  it('joins a tag on its first take, refills to perTag, and hands out only live children of that content', async () => {
    const h = new Harness();
    const src = source('py');
    h.sources.set('py', src);
    const pool = h.pool(2, 10);
    assert.equal(pool.take(src), undefined, 'empty at first: the caller starts its own child');
    await settle();
    assert.deepEqual(pool.sizes(), { py: 2 });
    const got = pool.take(src);
    assert.equal(got?.res.id, 'p1');
    await settle();
    assert.deepEqual(pool.sizes(), { py: 2 }, 'refilled after the take');
    h.alive.delete('p2'); // a prepared QEMU died while waiting
    assert.equal(pool.take(src)?.res.id, 'p3', 'a dead one is skipped and discarded');
    assert.ok(h.discarded.includes('p2'));
    await pool.close();
  });

  it('never hands a child of a re-created tag (other content) and throws those away', async () => {
    const h = new Harness();
    h.sources.set('py', source('py', 'py:v1'));
    const pool = h.pool(1, 10);
    pool.refill('py');
    await settle();
    const v2 = source('py', 'py:v2');
    assert.equal(pool.take(v2), undefined);
    assert.deepEqual(h.discarded, ['p1']);
    await pool.close();
  });

  it('respects the total bound across tags, and a tag that vanished is dropped', async () => {
    const h = new Harness();
    for (const t of ['a', 'b', 'c']) h.sources.set(t, source(t));
    const pool = h.pool(2, 3);
    for (const t of ['a', 'b', 'c']) pool.refill(t);
    await settle();
    assert.equal(pool.total(), 3);
    h.sources.set('a', undefined); // deleted snapshot
    const taken = pool.take(source('a'));
    await settle();
    assert.equal(pool.sizes().a, undefined, 'the deleted tag left the pool');
    await pool.close();
    assert.equal(pool.total(), 0);
    assert.deepEqual([...h.alive], [taken!.res.id], 'close stops every prepared child but the one taken');
  });

  it('a failed prepare is logged and stops that fill, not the pool', async () => {
    const h = new Harness();
    h.sources.set('py', source('py'));
    const pool = h.pool(2, 10);
    h.failNext = true;
    pool.refill('py');
    await settle();
    assert.match(h.logs.join('\n'), /cannot prepare a child of 'py': no room/);
    pool.refill('py');
    await settle();
    assert.deepEqual(pool.sizes(), { py: 2 });
    await pool.close();
  });
});
