/**
 * The guest agent's process table (src/guest/agent/procs.ts), run on the host: it is plain Node. On real
 * VMs it is driven through the E2B SDK (test/vm/e2b.test.ts).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProcTable, validateProcStart, type Subscriber } from '../../src/guest/agent/procs.js';
import { lookupUser } from '../../src/guest/agent/users.js';
import type { ProcEvent } from '../../src/protocol/agent-api.js';

/** A subscriber that records events; `ended` resolves with them at the end of its stream. */
function recorder(): Subscriber & { events: ProcEvent[]; ended: Promise<ProcEvent[]>; text(): string } {
  const events: ProcEvent[] = [];
  let done!: (e: ProcEvent[]) => void;
  const ended = new Promise<ProcEvent[]>((r) => (done = r));
  return {
    events,
    ended,
    send: (ev) => events.push(ev),
    backlog: () => 0,
    onDrain: () => {},
    end: () => done(events),
    text: () =>
      events
        .filter((e): e is Extract<ProcEvent, { type: 'data' }> => e.type === 'data')
        .map((e) => Buffer.from(e.data, 'base64').toString())
        .join(''),
  };
}

const waitFor = async (cond: () => boolean, what: string) => {
  const t0 = Date.now();
  while (!cond()) {
    assert.ok(Date.now() - t0 < 10_000, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('guest process table', () => {
  it('start streams start, output and end; the process leaves the table when it exits', async () => {
    const t = new ProcTable();
    const sub = recorder();
    const info = await t.start({ argv: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'] }, sub);
    const evs = await sub.ended;
    assert.deepEqual(evs[0], { type: 'start', pid: info.pid });
    assert.deepEqual(evs.at(-1), { type: 'end', exit_code: 3, signal: null });
    const out = evs.filter((e) => e.type === 'data' && e.stream === 'stdout');
    assert.equal(Buffer.from((out[0] as { data: string }).data, 'base64').toString(), 'out\n');
    assert.ok(evs.some((e) => e.type === 'data' && e.stream === 'stderr'));
    assert.deepEqual(t.list(), []);
  });

  it('a process outlives its stream; attach sees only new output; stdin stays open until closed', async () => {
    const t = new ProcTable();
    const first = recorder();
    const { pid } = await t.start({ argv: ['/bin/cat'], stdin: true, tag: 'cat' }, first);
    t.input({ pid }, Buffer.from('one\n'));
    await waitFor(() => first.text() === 'one\n', 'the first echo');
    t.detach(pid, first);
    assert.deepEqual(
      t.list().map((p) => [p.pid, p.tag]),
      [[pid, 'cat']],
    );
    const second = recorder();
    t.attach({ tag: 'cat' }, second);
    t.input({ pid }, Buffer.from('two\n'));
    await waitFor(() => second.text() === 'two\n', 'the echo after attaching');
    t.closeStdin({ pid });
    const evs = await second.ended;
    assert.deepEqual(evs[0], { type: 'start', pid });
    assert.deepEqual(evs.at(-1), { type: 'end', exit_code: 0, signal: null });
    assert.equal(first.text(), 'one\n', 'a detached stream gets nothing more');
  });

  it('signals reach the whole process group; unknown processes and closed stdin are clear errors', async () => {
    const t = new ProcTable();
    const sub = recorder();
    const { pid } = await t.start({ argv: ['/bin/sh', '-c', 'sleep 100 & wait'] }, sub);
    assert.throws(() => t.input({ pid }, Buffer.from('x')), /no open stdin/);
    t.signal({ pid }, 'SIGKILL');
    const evs = await sub.ended;
    assert.deepEqual(evs.at(-1), { type: 'end', exit_code: null, signal: 'SIGKILL' });
    assert.throws(
      () => t.signal({ pid }, 'SIGKILL'),
      (e: Error & { status?: number }) => e.status === 404,
    );
    assert.throws(() => t.attach({ tag: 'nope' }, recorder()), /tag nope not found/);
  });

  it('refuses a missing program, a missing cwd, an unknown user and a duplicate tag', async () => {
    const t = new ProcTable();
    await assert.rejects(t.start({ argv: ['/no/such/program'] }, recorder()), /not found/);
    await assert.rejects(t.start({ argv: ['/bin/true'], cwd: '/no/such/dir' }, recorder()), /does not exist/);
    await assert.rejects(t.start({ argv: ['/bin/true'], user: 'no-such-user-x' }, recorder()), /no user/);
    const sub = recorder();
    const { pid } = await t.start({ argv: ['/bin/sleep', '100'], tag: 'x' }, sub);
    await assert.rejects(t.start({ argv: ['/bin/true'], tag: 'x' }, recorder()), /tag "x" is running/);
    t.signal({ pid }, 'SIGKILL');
    await sub.ended;
    assert.match(validateProcStart({ argv: [] }) ?? '', /non-empty/);
    assert.match(validateProcStart({ argv: ['a'], env: { A: 1 as unknown as string } }) ?? '', /strings/);
  });

  it('a process on a terminal: it sees a tty of the given size, takes input and resizes', async () => {
    process.env.FORKD_PTY_RELAY = path.resolve('src/guest/agent/ptyrelay.py');
    const t = new ProcTable();
    const sub = recorder();
    const { pid } = await t.start(
      {
        argv: ['/bin/sh', '-c', 'tty; stty size; read x; stty size; echo "got $x"'],
        pty: { cols: 100, rows: 30 },
      },
      sub,
    );
    await waitFor(() => sub.text().includes('30 100'), 'the first size');
    assert.match(sub.text(), /^\/dev\/pts\/\d+/);
    assert.ok(
      sub.events.some((e) => e.type === 'data' && e.stream === 'pty'),
      'output comes as pty data',
    );
    t.resize({ pid }, 120, 40);
    t.input({ pid }, Buffer.from('hi\n'));
    const evs = await sub.ended;
    assert.match(sub.text(), /40 120/);
    assert.match(sub.text(), /got hi/);
    assert.deepEqual(evs.at(-1), { type: 'end', exit_code: 0, signal: null });
    assert.throws(() => t.resize({ pid }, 1, 1), /not found/);
  });

  it('looks users up in passwd', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-users-'));
    const f = path.join(dir, 'passwd');
    fs.writeFileSync(f, 'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n');
    assert.deepEqual(lookupUser('user', f), { name: 'user', uid: 1000, gid: 1000, home: '/home/user' });
    assert.equal(lookupUser('nobody-here', f), undefined);
    assert.equal(lookupUser(undefined, f)!.uid, 0);
    fs.rmSync(dir, { recursive: true });
  });
});
