import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  HelloScanner,
  helloFrame,
  ackFrame,
  findAck,
  partialPrefixLength,
  HELLO,
} from '../../src/protocol/resync.js';

describe('resync handshake', () => {
  it('passes plain data straight through', () => {
    const s = new HelloScanner();
    const r = s.push(Buffer.from('PRI * HTTP/2.0'));
    assert.equal(r.data.toString(), 'PRI * HTTP/2.0');
    assert.equal(r.hello, undefined);
  });

  it('finds HELLO+nonce split across every possible chunk boundary', () => {
    const nonce = randomBytes(16);
    const stream = Buffer.concat([
      Buffer.from('stale-bytes-of-old-session'),
      helloFrame(nonce),
      Buffer.from('new'),
    ]);
    for (let cut = 1; cut < stream.length; cut++) {
      const s = new HelloScanner();
      const a = s.push(stream.subarray(0, cut));
      const b = a.hello ? undefined : s.push(stream.subarray(cut));
      const found = a.hello ?? b?.hello;
      assert.ok(found, `cut at ${cut}`);
      assert.ok(found.nonce.equals(nonce));
      const before = Buffer.concat([a.data, b?.data ?? Buffer.alloc(0)]).toString();
      assert.equal(before, 'stale-bytes-of-old-session', `cut at ${cut}`);
      const rest = a.hello ? Buffer.concat([a.hello.rest, s.push(stream.subarray(cut)).data]) : found.rest;
      assert.equal(rest.toString(), 'new', `cut at ${cut}`);
    }
  });

  it('holds back only a tail that could start the magic, and flush releases it', () => {
    const s = new HelloScanner();
    const tail = HELLO.subarray(0, 5);
    const r = s.push(Buffer.concat([Buffer.from('abc'), tail]));
    assert.equal(r.data.toString(), 'abc');
    assert.ok(s.holding);
    assert.ok(s.flush().equals(tail));
    assert.ok(!s.holding);
  });

  it('computes the longest partial prefix', () => {
    assert.equal(partialPrefixLength(Buffer.from('xyz'), HELLO), 0);
    assert.equal(partialPrefixLength(Buffer.concat([Buffer.from('x'), HELLO.subarray(0, 7)]), HELLO), 7);
    // A full magic is not a *partial* prefix.
    assert.ok(partialPrefixLength(HELLO, HELLO) < HELLO.length);
  });

  it('host finds the ACK for its own nonce only', () => {
    const mine = randomBytes(16);
    const other = randomBytes(16);
    const buf = Buffer.concat([
      Buffer.from('junk'),
      ackFrame(other),
      Buffer.from('x'),
      ackFrame(mine),
      Buffer.from('h2'),
    ]);
    assert.equal(findAck(buf, mine)?.toString(), 'h2');
    assert.equal(findAck(Buffer.from('nothing'), mine), undefined);
  });

  it('the agent source never contains the raw magic bytes', async () => {
    const fs = await import('node:fs');
    const url = new URL('../../src/protocol/resync.js', import.meta.url);
    assert.equal(fs.readFileSync(url).indexOf(HELLO), -1);
  });
});
