/**
 * The daemon's sandbox manager without VMs: it is handed an engine whose "VMs" are plain sleeping
 * processes and whose agents are stand-in guests speaking the real handshake and HTTP/2. What is tested
 * is the manager's own bookkeeping: records, persistence, net slots, release on every path, exits,
 * TTLs, agent reconnects and re-adoption. (The same paths on real VMs: test/vm/controller.test.ts.)
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http2 from 'node:http2';
import { spawn, type ChildProcess } from 'node:child_process';
import { isolatedDirs } from '../helpers/env.js';
import { FakeGuest, PING } from '../helpers/fake-guest.js';
import { SandboxManager, type SandboxEngine } from '../../src/controller/sandboxes.js';
import { StateStore, type SandboxRecord } from '../../src/controller/state.js';
import { WarmPool, newSandboxId, sandboxDir } from '../../src/engine/pool.js';
import { Child, type ChildResources, type ChildSource, type PreparedChild } from '../../src/engine/child.js';
import { GuestSession } from '../../src/agent-client/guest-session.js';
import { AgentClient } from '../../src/agent-client/client.js';
import { pidStartTime } from '../../src/util/proc.js';
import { STARTED } from '../../src/protocol/resync.js';
import type { QemuVm } from '../../src/vmm/qemu.js';

const IDENTITY = {
  hostname: 'x',
  clock_set: true,
  clock_skew_before_ms: 0,
  kernel_rng_reseeded: true,
  python_reseeded: true,
  took_ms: 1,
};

/** A "VM": a sleeping process with the handle shape the manager uses. */
function fakeVm(proc: ChildProcess, agentSocket: string): QemuVm {
  let alive = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => {
      alive = false;
      resolve({ code, signal });
    }),
  );
  return {
    pid: proc.pid!,
    agentSocket,
    exited,
    isAlive: () => alive,
    destroy: async () => {
      if (alive) proc.kill('SIGKILL');
      await exited;
    },
    release: () => {},
  } as unknown as QemuVm;
}

class FakeEngine implements SandboxEngine {
  released: ChildResources[] = [];
  guests = new Map<string, FakeGuest>();
  procs: ChildProcess[] = [];

  async guestFor(id: string): Promise<FakeGuest> {
    const g = new FakeGuest(path.dirname(sandboxDir(id)));
    g.handler = (s: http2.ServerHttp2Stream, p: string) => {
      s.respond({ ':status': 200, 'content-type': 'application/json' });
      s.end(JSON.stringify(p.startsWith('/v1/identity') ? IDENTITY : PING));
    };
    await g.listen();
    this.guests.set(id, g);
    return g;
  }

  sleeper(): ChildProcess {
    const p = spawn('sleep', ['600'], { stdio: 'ignore' });
    this.procs.push(p);
    return p;
  }

  async prepare(source: ChildSource): Promise<PreparedChild> {
    const id = newSandboxId();
    const dir = sandboxDir(id);
    fs.mkdirSync(dir, { recursive: true });
    const g = await this.guestFor(id);
    return {
      source,
      res: { id, work_dir: dir, tap: `fk${id.slice(3, 15)}`, netns: null, net_index: null, cgroup: null },
      disk: path.join(dir, 'disk.qcow2'),
      pending: { vm: fakeVm(this.sleeper(), g.socketPath), spawnMs: 1, loadMs: 1 },
      mounts: [],
    };
  }

  async start(
    p: PreparedChild,
    opts: { netIndex?: number | undefined; memoryLimitMib?: number | null | undefined },
  ): Promise<Child> {
    if (opts.netIndex !== undefined) {
      p.res.net_index = opts.netIndex;
      p.res.netns = `forkd-${p.res.id}`;
    }
    if (opts.memoryLimitMib) p.res.cgroup = `/cg/${p.res.id}`;
    const vm = p.pending.vm;
    const agent = await AgentClient.connect(vm.agentSocket, { timeoutMs: 5000 });
    const identity = await agent.announce(p.res.id);
    const timings = {
      spawn_ms: 1,
      load_ms: 1,
      cont_ms: 1,
      agent_ms: 1,
      identity_ms: 1,
      ready_ms: 5,
      from_pool: false,
    };
    return new Child(
      p.res,
      vm,
      new GuestSession({ agent: vm.agentSocket }, { agent }),
      identity,
      timings,
      p.disk,
    );
  }

  async adopt(res: ChildResources, info: { pid: number }): Promise<Child> {
    const proc = this.procs.find((x) => x.pid === info.pid)!;
    const g = this.guests.get(res.id) ?? (await this.guestFor(res.id));
    const vm = fakeVm(proc, g.socketPath);
    return new Child(res, vm, new GuestSession({ agent: vm.agentSocket }), undefined, undefined, '');
  }

  async release(res: ChildResources): Promise<void> {
    this.released.push({ ...res });
    fs.rmSync(res.work_dir, { recursive: true, force: true });
  }

  close(): void {
    for (const p of this.procs) p.kill('SIGKILL');
    for (const g of this.guests.values()) g.close();
  }
}

const SOURCE = {
  s: { tag: 'fake', meta: {} },
  machine: { accel: 'tcg', vcpus: 1, memMib: 128, net: 'virtio' },
  memoryFile: '/dev/null',
  diskImage: '/dev/null',
  key: 'fake:1',
} as unknown as ChildSource;

const SPAWN = {
  snapshot_tag: 'fake',
  per_child_netns: false,
  memory_limit_mib: null,
  timeout_secs: null,
  envs: {},
  metadata: {},
};

describe('sandbox manager (no VMs)', () => {
  let dirs: ReturnType<typeof isolatedDirs>;
  let engine: FakeEngine;
  let stateFile: string;
  const exits: string[] = [];
  const manager = (state: StateStore) =>
    new SandboxManager(
      state,
      new WarmPool({ perTag: 0, maxTotal: 0, log: () => {} }, async () => undefined),
      { log: () => {}, onExit: (id) => exits.push(id) },
      engine,
    );
  const freshState = () => {
    const st = new StateStore(stateFile);
    st.load(() => {});
    return st;
  };

  before(() => {
    dirs = isolatedDirs('manager');
    stateFile = path.join(dirs.data, 'state.json');
    engine = new FakeEngine();
  });
  after(() => {
    engine.close();
    dirs.cleanup();
  });

  it('spawns with distinct net slots, persists each record, and destroy releases exactly what it had', async () => {
    const state = freshState();
    const m = manager(state);
    const [a, b] = await Promise.all([
      m.spawnOne(SOURCE, { ...SPAWN, per_child_netns: true }),
      m.spawnOne(SOURCE, { ...SPAWN, per_child_netns: true, memory_limit_mib: 256 }),
    ]);
    assert.notEqual(a.rec.net_index, b.rec.net_index, 'concurrent spawns get different net slots');
    assert.equal(b.rec.cgroup, `/cg/${b.rec.id}`);
    const onDisk = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as {
      sandboxes: Record<string, SandboxRecord>;
    };
    assert.deepEqual(Object.keys(onDisk.sandboxes).sort(), [a.rec.id, b.rec.id].sort());
    assert.equal(onDisk.sandboxes[b.rec.id]!.pid_start, pidStartTime(b.rec.pid));
    await m.destroy(a.rec.id);
    await m.destroy(b.rec.id);
    const rel = engine.released.filter((r) => r.id === a.rec.id || r.id === b.rec.id);
    assert.equal(rel.length, 2, 'each released once');
    assert.deepEqual(
      rel.find((r) => r.id === b.rec.id),
      {
        id: b.rec.id,
        work_dir: b.rec.work_dir,
        tap: b.rec.tap,
        netns: b.rec.netns,
        net_index: b.rec.net_index,
        cgroup: b.rec.cgroup,
      },
    );
    assert.equal(freshState().sandboxes.size, 0);
    assert.ok(!fs.existsSync(a.rec.work_dir));
  });

  it('a VM that exits on its own is released, forgotten by the state, and reported as exited', async () => {
    const m = manager(freshState());
    const { rec } = await m.spawnOne(SOURCE, SPAWN);
    process.kill(rec.pid, 'SIGKILL');
    for (let i = 0; i < 100 && !exits.includes(rec.id); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(exits.includes(rec.id));
    assert.throws(() => m.get(rec.id), /no longer running: exited/);
    assert.ok(engine.released.some((r) => r.id === rec.id));
    assert.equal(freshState().sandboxes.has(rec.id), false);
  });

  it('the reaper kills sandboxes past their timeout, not others', async () => {
    const m = manager(freshState());
    const short = await m.spawnOne(SOURCE, { ...SPAWN, timeout_secs: 1 });
    const long = await m.spawnOne(SOURCE, { ...SPAWN, timeout_secs: 3600 });
    await new Promise((r) => setTimeout(r, 1100));
    assert.deepEqual(await m.reap(), [short.rec.id]);
    assert.ok(m.live.has(long.rec.id));
    await m.destroy(long.rec.id);
  });

  it("reconnects to a sandbox's agent after the agent restarted", async () => {
    const m = manager(freshState());
    const { rec } = await m.spawnOne(SOURCE, SPAWN);
    const first = await m.agent(rec.id);
    assert.equal((await first.ping()).ok, true);
    const g = engine.guests.get(rec.id)!;
    g.handler = (_s, _p, raw) => raw.write(STARTED);
    await assert.rejects(first.ping(), /restarted/);
    g.handler = (s) => {
      s.respond({ ':status': 200 });
      s.end(JSON.stringify(PING));
    };
    const second = await m.agent(rec.id);
    assert.notEqual(second, first);
    assert.equal((await second.ping()).ok, true);
    await m.destroy(rec.id);
  });

  it('re-adopts live sandboxes after a restart and releases those that died meanwhile', async () => {
    const state = freshState();
    const m1 = manager(state);
    const live = await m1.spawnOne(SOURCE, SPAWN);
    const dead = await m1.spawnOne(SOURCE, SPAWN);
    m1.releaseAll(); // a daemon stopping: sandboxes keep running
    // The second one dies while no daemon watches it (its exit must not be seen by m1).
    m1.live.clear();
    process.kill(dead.rec.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    const m2 = manager(freshState());
    const { adopted, gone } = await m2.adoptAll();
    assert.deepEqual(adopted, [live.rec.id]);
    assert.deepEqual(gone, [dead.rec.id]);
    assert.ok(engine.released.some((r) => r.id === dead.rec.id));
    assert.deepEqual([...freshState().sandboxes.keys()], [live.rec.id]);
    assert.equal(
      (await (await m2.agent(live.rec.id)).ping()).ok,
      true,
      'the adopted agent reconnects on use',
    );
    await m2.destroy(live.rec.id);
  });
});
