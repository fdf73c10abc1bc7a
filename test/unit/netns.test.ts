import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { allocIndex, netFor } from '../../src/network/netns.js';

describe('per-sandbox network slots', () => {
  it('takes the smallest slot neither ours nor held on the host by another daemon', () => {
    assert.equal(
      allocIndex([], () => false),
      0,
    );
    assert.equal(
      allocIndex([0, 1], () => false),
      2,
    );
    // Slot 2's host veth exists (another daemon's sandbox): skipped, though our state does not know it.
    assert.equal(
      allocIndex([0, 1], (i) => i === 2),
      3,
    );
  });
  it('gives each slot its own host veth and /30', () => {
    const a = netFor('a', 0);
    const b = netFor('b', 1);
    assert.notEqual(a.hostVeth, b.hostVeth);
    assert.equal(a.hostAddr, '10.201.0.1');
    assert.equal(b.hostAddr, '10.201.0.5');
  });
});
