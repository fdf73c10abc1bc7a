/**
 * The guest Python worker's parser of its host port (pyworker.py HostFrames), run by the host's python3:
 * it has no I/O, so the sessions, repeated HELLOs and split frames the port delivers are fed to it as
 * byte chunks. (The worker as a whole runs on real VMs: test/vm/core.test.ts.)
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { ACK, HELLO, helloFrame } from '../../src/protocol/resync.js';

const PYWORKER_DIR = path.resolve('src/guest/agent');

// Feeds each chunk to one HostFrames and prints, per chunk, the ACKs it asked for and the lines it gave.
const DRIVER = `
import json, sys
sys.path.insert(0, sys.argv[1])
from pyworker import HostFrames
frames = HostFrames(int(sys.argv[2]))
out = []
for item in json.loads(sys.stdin.read()):
    if item == "reset":
        frames.reset()
        continue
    if item == "ack_lost":
        frames.ack_lost()
        continue
    acks, lines = frames.feed(bytes.fromhex(item))
    out.append({"acks": [a.hex() for a in acks], "lines": [l.decode() for l in lines], "session": frames.in_session})
print(json.dumps(out))
`;

interface Step {
  acks: string[];
  lines: string[];
  session: boolean;
}

function python(): string | undefined {
  for (const p of ['python3', '/usr/bin/python3']) {
    try {
      execFileSync(p, ['-c', 'import sys; assert sys.version_info >= (3, 9)'], { stdio: 'ignore' });
      return p;
    } catch {
      /* try the next */
    }
  }
  return undefined;
}
const PY = python();

/** `maxLine` defaults to the worker's own limit (64 MiB). */
function feed(chunks: (Buffer | 'reset' | 'ack_lost')[], maxLine = 64 << 20): Step[] {
  const input = JSON.stringify(chunks.map((c) => (typeof c === 'string' ? c : c.toString('hex'))));
  const out = execFileSync(PY!, ['-c', DRIVER, PYWORKER_DIR, String(maxLine)], { input, encoding: 'utf8' });
  return JSON.parse(out) as Step[];
}

const nonceA = Buffer.alloc(16, 0xa1);
const nonceB = Buffer.alloc(16, 0x0a); // newline bytes inside a nonce must not split anything
const ack = (n: Buffer) => Buffer.concat([ACK, n]).toString('hex');
const b = (s: string) => Buffer.from(s);

describe(
  'pyworker.py HostFrames (the Python port parser, in host python3)',
  { skip: PY ? false : 'no python3 >= 3.9 on this host' },
  () => {
    it('drops bytes before the first HELLO, ACKs it once, then gives complete lines', () => {
      const steps = feed([
        b('stale {"id":1}\n'),
        Buffer.concat([helloFrame(nonceA), b('{"id":2}\n{"id"')]),
        b(':3}\n'),
      ]);
      assert.deepEqual(steps, [
        { acks: [], lines: [], session: false },
        { acks: [ack(nonceA)], lines: ['{"id":2}'], session: true },
        { acks: [], lines: ['{"id":3}'], session: true },
      ]);
    });

    it('a repeated HELLO of the current session gets no second ACK and keeps the bytes around it', () => {
      const hello = helloFrame(nonceB);
      const steps = feed([
        hello,
        Buffer.concat([hello, b('{"id":1}\n'), hello.subarray(0, 10)]),
        Buffer.concat([hello.subarray(10), b('{"id":2}\n')]),
      ]);
      assert.deepEqual(
        steps.map((s) => [s.acks.length, s.lines]),
        [
          [1, []],
          [0, ['{"id":1}']],
          [0, ['{"id":2}']],
        ],
      );
    });

    it('an ACK that could not be written is sent again for the next repeat, once', () => {
      // The worker's write of the ACK failed (the guest kernel did not yet know the host had connected).
      const hello = helloFrame(nonceA);
      const steps = feed([hello, 'ack_lost', hello, Buffer.concat([hello, b('{"id":1}\n')])]);
      assert.deepEqual(
        steps.map((s) => [s.acks, s.lines]),
        [
          [[ack(nonceA)], []],
          [[ack(nonceA)], []],
          [[], ['{"id":1}']],
        ],
      );
    });

    it('a HELLO with a new nonce is a new session: the old one’s unread lines are dropped', () => {
      const steps = feed([
        helloFrame(nonceA),
        Buffer.concat([b('{"id":1}\n{"id":2'), helloFrame(nonceB), b('{"id":9}\n')]),
      ]);
      assert.deepEqual(steps[1], { acks: [ack(nonceB)], lines: ['{"id":9}'], session: true });
    });

    it('a HELLO split anywhere, even before a session, is still found', () => {
      const hello = helloFrame(nonceA);
      for (const cut of [1, HELLO.length - 1, HELLO.length + 3, hello.length - 1]) {
        const steps = feed([
          Buffer.concat([b('junk'), hello.subarray(0, cut)]),
          Buffer.concat([hello.subarray(cut), b('{"id":1}\n')]),
        ]);
        assert.deepEqual(
          steps.map((s) => [s.acks, s.lines]),
          [
            [[], []],
            [[ack(nonceA)], ['{"id":1}']],
          ],
          `cut at ${cut}`,
        );
      }
    });

    it('after the host went away, the same nonce starts a session again', () => {
      const steps = feed([helloFrame(nonceA), 'reset', Buffer.concat([helloFrame(nonceA), b('{"id":1}\n')])]);
      assert.deepEqual(steps[1], { acks: [ack(nonceA)], lines: ['{"id":1}'], session: true });
    });

    it('a line of many reads comes out whole', () => {
      const part = Buffer.alloc(3000, 0x62);
      const steps = feed([helloFrame(nonceA), part, part, Buffer.concat([part, b('\n')])]);
      assert.deepEqual(
        steps.map((s) => s.lines.map((l) => l.length)),
        [[], [], [], [9000]],
      );
    });

    it('a line past the limit ends the session (the host resyncs) instead of growing without bound', () => {
      const big = Buffer.alloc(1 << 20, 0x61);
      const chunks: Buffer[] = [helloFrame(nonceA)];
      for (let i = 0; i < 65; i++) chunks.push(big);
      const steps = feed(chunks);
      assert.equal(steps.at(-1)!.session, false);
    });
  },
);
