import path from 'node:path';
import { parseVolume } from '../../snapshot/volumes.js';
import type { Command } from 'commander';
import { ForkdError } from '../../util/errors.js';
import { median, ms, table } from '../../util/format.js';
import { Controller } from '../../sdk/controller.js';
import { ControllerError, TimeoutError } from '../../sdk/errors.js';
import type { SandboxInfo } from '../../sdk/types.js';
import { fail, intArg, out, printJson } from '../output.js';
import { policyFromFlags, policyOptions, printPolicy, type PolicyFlags } from './network.js';

/** Verbs that talk to the forkd-controller daemon over its REST API (through the SDK). */
export interface DaemonOpts {
  daemonUrl?: string;
  daemonToken?: string;
  json?: boolean;
}

/** --daemon-url / --daemon-token; the token's value (flag or FORKD_TOKEN) is never shown in help. */
export function daemonOptions(cmd: Command): Command {
  return cmd
    .option('--daemon-url <url>', 'controller URL (env FORKD_URL; default http://127.0.0.1:8889)')
    .option('--daemon-token <token>', 'bearer token (env FORKD_TOKEN)');
}

export function controllerFrom(o: DaemonOpts, timeoutMs?: number): Controller {
  return new Controller({
    ...(o.daemonUrl ? { baseUrl: o.daemonUrl } : {}),
    ...(o.daemonToken ? { token: o.daemonToken } : {}),
    ...(timeoutMs ? { timeoutMs } : {}),
  });
}

/** Turn SDK and transport errors into the CLI's named errors. */
export function daemonError(e: unknown, url: string): ForkdError {
  if (e instanceof ForkdError) return e;
  if (e instanceof ControllerError) {
    const code =
      e.status === 400
        ? 'bad_input'
        : e.status === 404
          ? 'not_found'
          : e.status === 409
            ? e.code === 'exists'
              ? 'exists'
              : 'conflict'
            : 'internal';
    const msg = String((e.body as { error?: string })?.error ?? e.message);
    return new ForkdError(
      code,
      msg,
      e.hint ?? (e.status === 401 ? 'set FORKD_TOKEN or --daemon-token' : undefined),
    );
  }
  if (e instanceof TimeoutError) return new ForkdError('timeout', e.message);
  // fetch() reports every transport failure as "fetch failed" with the socket error as its cause.
  if (e instanceof TypeError && e.message === 'fetch failed') {
    const cause = (e as { cause?: { message?: string } }).cause;
    return new ForkdError(
      'host_unsupported',
      `cannot reach the forkd controller at ${url}${cause?.message ? ` (${cause.message})` : ''}`,
      'start it: forkd-controller serve (or set FORKD_URL / --daemon-url)',
    );
  }
  return new ForkdError('internal', (e as Error).message);
}

export function act<O extends DaemonOpts>(fn: (o: O, c: Controller, ...args: string[]) => Promise<void>) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const o = cmd.opts() as O;
    const c = controllerFrom(o);
    try {
      await fn(o, c, ...(args.slice(0, -2) as string[]));
    } catch (e) {
      fail(daemonError(e, c.baseUrl), Boolean(o.json));
    }
  };
}

function sandboxRows(list: SandboxInfo[]): string[][] {
  return list.map((s) => [
    s.id,
    s.snapshot_tag,
    s.status,
    String(s.pid ?? '—'),
    s.netns ?? '—',
    String(s.branch_count),
    s.guest_addr ?? '—',
    s.network_summary,
  ]);
}

/** `HOST:GUEST[:MODE]` with HOST made absolute (checked again by the daemon). */
function absoluteVolume(v: string): string {
  const spec = parseVolume(v);
  return [path.resolve(spec.host_path), spec.guest_path, ...(spec.mode === 'cow' ? [] : [spec.mode])].join(
    ':',
  );
}

export function registerDaemon(program: Command): void {
  daemonOptions(
    policyOptions(
      program
        .command('network <sandbox>')
        .description(
          "show a sandbox's egress policy; with flags, replace it (atomically, on the running sandbox)",
        )
        .option('--open', 'remove all restrictions (the host and other sandboxes stay unreachable)')
        .option('--json', 'machine-readable output'),
    ),
  ).action(
    act<DaemonOpts & PolicyFlags & { open?: boolean }>(async (o, c, id) => {
      const policy = o.open ? {} : policyFromFlags(o);
      const s = policy ? await c.updateNetwork(id!, policy) : await c.getSandbox(id!);
      printPolicy(s, Boolean(o.json));
    }),
  );

  daemonOptions(
    policyOptions(program.command('spawn'))
      .description('start sandboxes from a snapshot through the daemon; they keep running until killed')
      .requiredOption('--tag <tag>', 'snapshot tag')
      .option('-n, --n <n>', 'how many', intArg('-n'), 1)
      .option('--per-child-netns', 'each sandbox in its own network namespace with NAT egress')
      .option('--no-netns', "no network, even if the snapshot's source had one")
      .option('--memory-limit-mib <mib>', 'memory limit per sandbox (cgroup)', intArg('--memory-limit-mib'))
      .option('--timeout <secs>', 'kill each sandbox after this many seconds', intArg('--timeout'))
      .option(
        '--volume <HOST:GUEST[:ro|:shared]>',
        "another file for one of the snapshot's volumes (repeatable; same size as the snapshot's)",
        (v: string, a: string[] = []) => [...a, v],
      )
      .option('--json', 'machine-readable output'),
  ).action(
    act<
      DaemonOpts &
        PolicyFlags & {
          tag: string;
          n: number;
          perChildNetns?: boolean;
          netns?: boolean;
          memoryLimitMib?: number;
          timeout?: number;
          volume?: string[];
        }
    >(async (o, c) => {
      const network = policyFromFlags(o);
      const res = await c.spawnSandboxes({
        snapshotTag: o.tag,
        n: o.n,
        // Unset: the snapshot decides (a branch of a networked sandbox keeps its network and policy).
        ...(o.perChildNetns ? { perChildNetns: true } : o.netns === false ? { perChildNetns: false } : {}),
        ...(network ? { network } : {}),
        ...(o.memoryLimitMib ? { memoryLimitMib: o.memoryLimitMib } : {}),
        ...(o.timeout ? { timeout: o.timeout } : {}),
        // Host paths are the daemon's: made absolute here, where the user typed them.
        ...(o.volume ? { volumes: o.volume.map((v) => absoluteVolume(v)) } : {}),
      });
      if (o.json) return printJson(res);
      for (const r of res)
        if (r.ok)
          out(
            `  ✓ ${r.id}  guest=${r.guest_addr ?? '—'}  netns=${r.netns ?? '—'}  ready in ${ms(r.timings!.ready_ms)}${r.timings!.from_pool ? ' (warm pool)' : ''}`,
          );
        else out(`  ✗ ${r.error}`);
      const bad = res.filter((r) => !r.ok).length;
      if (bad) process.exitCode = 1;
    }),
  );

  daemonOptions(
    program
      .command('ls')
      .description('list the daemon’s sandboxes')
      .option('--json', 'machine-readable output'),
  ).action(
    act(async (o, c) => {
      const list = await c.listSandboxes();
      if (o.json) return printJson(list);
      if (!list.length) return void process.stderr.write('no live sandboxes\n');
      out(
        table(
          ['ID', 'SNAPSHOT', 'STATUS', 'PID', 'NETNS', 'BRANCHES', 'GUEST_ADDR', 'EGRESS'],
          sandboxRows(list),
        ),
      );
      out(`${list.length} sandbox(es)`);
    }),
  );

  daemonOptions(
    program
      .command('kill [ids...]')
      .description('kill sandboxes by id, all of them, or all of one snapshot')
      .option('--all', 'every sandbox')
      .option('--tag <tag>', 'every sandbox forked from this snapshot')
      .option('--json', 'machine-readable output'),
  ).action(async (ids: string[], o: DaemonOpts & { all?: boolean; tag?: string }) => {
    const c = controllerFrom(o);
    try {
      if ((o.all ? 1 : 0) + (o.tag ? 1 : 0) + (ids.length ? 1 : 0) !== 1)
        throw new ForkdError(
          'bad_input',
          'give sandbox ids, or --all, or --tag TAG (exactly one of them)',
          'e.g. forkd kill --all',
        );
      for (const id of ids)
        if (!/^[A-Za-z0-9_-]+$/.test(id))
          throw new ForkdError('bad_input', `'${id}' is not a sandbox id`, 'list them with forkd ls');
      const targets = ids.length
        ? ids
        : (await c.listSandboxes()).filter((s) => o.all || s.snapshot_tag === o.tag).map((s) => s.id);
      const results: Array<{ id: string; ok: boolean; error?: string }> = [];
      for (const id of targets) {
        try {
          await c.killSandbox(id);
          results.push({ id, ok: true });
        } catch (e) {
          results.push({ id, ok: false, error: daemonError(e, c.baseUrl).message });
        }
      }
      if (o.json) printJson(results);
      else for (const r of results) out(r.ok ? `✓ ${r.id}` : `✗ ${r.id} (${r.error})`);
      if (results.some((r) => !r.ok)) process.exitCode = 1;
    } catch (e) {
      fail(daemonError(e, c.baseUrl), Boolean(o.json));
    }
  });

  const ws = program
    .command('workspace')
    .description('long-lived sandboxes that can be suspended to a snapshot and resumed');
  daemonOptions(
    ws
      .command('create <name>')
      .requiredOption('--snapshot <tag>', 'snapshot to start from')
      .option('--per-child-netns', 'own network namespace')
      .option('--memory-limit-mib <mib>', 'memory limit', intArg('--memory-limit-mib'))
      .option('--json', 'machine-readable output'),
  ).action(
    act<DaemonOpts & { snapshot: string; perChildNetns?: boolean; memoryLimitMib?: number }>(
      async (o, c, name) => {
        const w = await c.createWorkspace({
          name: name!,
          snapshotTag: o.snapshot,
          perChildNetns: Boolean(o.perChildNetns),
          ...(o.memoryLimitMib ? { memoryLimitMib: o.memoryLimitMib } : {}),
        });
        if (o.json) return printJson(w);
        out(`✓ workspace '${w.name}' running (sandbox ${w.live_sandbox_id})`);
      },
    ),
  );
  daemonOptions(
    ws
      .command('suspend <name>')
      .option('--diff', 'store only what changed since the last state')
      .option('--json', 'machine-readable output'),
  ).action(
    act<DaemonOpts & { diff?: boolean }>(async (o, c, name) => {
      const w = await c.suspendWorkspace(name!, { diff: Boolean(o.diff) });
      if (o.json) return printJson(w);
      out(`✓ workspace '${w.name}' suspended to ${w.current_state_tag}`);
    }),
  );
  daemonOptions(ws.command('resume <name>').option('--json', 'machine-readable output')).action(
    act(async (o, c, name) => {
      const w = await c.resumeWorkspace(name!);
      if (o.json) return printJson(w);
      out(`✓ workspace '${w.name}' running (sandbox ${w.live_sandbox_id})`);
    }),
  );
  daemonOptions(ws.command('list').option('--json', 'machine-readable output')).action(
    act(async (o, c) => {
      const list = await c.listWorkspaces();
      if (o.json) return printJson(list);
      if (!list.length) return out('(no workspaces)');
      for (const w of list)
        out(
          `${w.name} ${w.status} source=${w.source_snapshot_tag} state=${w.current_state_tag ?? '—'} live=${w.live_sandbox_id ?? '—'}`,
        );
    }),
  );
  daemonOptions(ws.command('delete <name>').option('--json', 'machine-readable output')).action(
    act(async (o, c, name) => {
      await c.deleteWorkspace(name!);
      if (o.json) return printJson({ deleted: name });
      out(`deleted workspace '${name}'`);
    }),
  );

  daemonOptions(
    program
      .command('bench')
      .description('time spawn → exec → branch → fanout → cleanup against the daemon')
      .option('--tag <tag>', 'snapshot (default: the first ready one)')
      .option('-n, --n <n>', 'fanout size', intArg('-n'), 5)
      .option('--mode <mode>', 'branch mode: full | diff | live', 'live')
      .option('--per-child-netns', 'fan out into network namespaces')
      .option('--json', 'machine-readable output'),
  ).action(
    act<DaemonOpts & { tag?: string; n: number; mode: string; perChildNetns?: boolean }>(async (o, c) => {
      if (!['full', 'diff', 'live'].includes(o.mode))
        throw new ForkdError('bad_input', `--mode must be full, diff or live (got '${o.mode}')`);
      const tag = o.tag ?? (await c.listSnapshots()).find((s) => s.status === 'ready')?.tag;
      if (!tag)
        throw new ForkdError(
          'not_found',
          'the daemon has no ready snapshot',
          'create one: forkd snapshot --tag NAME',
        );
      const steps: Array<{ step: string; ms: number; detail: string }> = [];
      const time = async <T>(step: string, f: () => Promise<T>, detail: (r: T) => string): Promise<T> => {
        const t0 = performance.now();
        const r = await f();
        steps.push({ step, ms: Math.round((performance.now() - t0) * 10) / 10, detail: detail(r) });
        return r;
      };
      const t0 = performance.now();
      const [first] = await time(
        'spawn',
        () => c.spawnSandboxes({ snapshotTag: tag, n: 1 }),
        (r) => `ready_ms=${r[0]?.timings?.ready_ms}`,
      );
      if (!first?.ok) throw new ForkdError('vmm_failed', `spawn failed: ${first?.error}`);
      const id = first.id!;
      const branchTag = `bench-${Date.now().toString(36)}`;
      const spawned: string[] = [id];
      try {
        await time(
          'exec round-trip',
          () => c.execCommand(id, ['sh', '-c', 'echo bench']),
          (r) => `exit=${r.exit_code}`,
        );
        await time(
          'eval round-trip',
          () => c.evalCode(id, '1+1'),
          (r) => `result=${r.result}`,
        );
        await time(
          `branch (${o.mode})`,
          () => c.branchSandbox(id, { tag: branchTag, mode: o.mode as 'live' }),
          (r) => `pause_ms=${r.pause_ms}`,
        );
        const fan = await time(
          `fanout (n=${o.n})`,
          () =>
            c.spawnSandboxes({
              snapshotTag: branchTag,
              n: o.n,
              ...(o.perChildNetns ? { perChildNetns: true } : {}),
            }),
          (r) =>
            `ok=${r.filter((x) => x.ok).length} ready p50=${median(r.filter((x) => x.ok).map((x) => x.timings!.ready_ms))} ms`,
        );
        for (const f of fan) if (f.ok) spawned.push(f.id!);
      } finally {
        await time(
          'cleanup',
          async () => {
            await Promise.all(spawned.map((s) => c.killSandbox(s).catch(() => {})));
            await c.deleteSnapshot(branchTag).catch(() => {});
          },
          () => `killed ${spawned.length}, removed ${branchTag}`,
        );
      }
      const total = Math.round(performance.now() - t0);
      if (o.json) return printJson({ tag, n: o.n, mode: o.mode, steps, total_ms: total });
      out(`forkd bench against snapshot ${tag}`);
      for (const s of steps) out(`  ${s.step.padEnd(22)}${String(s.ms).padStart(8)} ms  ${s.detail}`);
      out(`  ${'total'.padEnd(22)}${String(total).padStart(8)} ms`);
    }),
  );
}
