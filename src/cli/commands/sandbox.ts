import type { Command } from 'commander';
import { ForkdError } from '../../util/errors.js';
import { out, printJson, intArg } from '../output.js';
import { act, daemonOptions, type DaemonOpts } from './daemon.js';

/** The exit code a command's result maps to: its own, 128+N for a signal, 124 for a timeout. */
export function exitCodeOf(r: {
  exit_code: number | null;
  signal: string | null;
  timed_out: boolean;
}): number {
  if (r.timed_out) return 124;
  if (r.exit_code !== null) return r.exit_code;
  return 128 + (r.signal === 'SIGKILL' ? 9 : r.signal === 'SIGTERM' ? 15 : 1);
}

function checkId(id: string): void {
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(id))
    throw new ForkdError('bad_input', `'${id}' is not a sandbox id`, 'list them with forkd ls');
}

/** `forkd exec / eval / ping SB`: one sandbox of the daemon, as the REST API serves it. */
export function registerSandboxVerbs(program: Command): void {
  daemonOptions(
    program
      .command('exec <sandbox> <cmd...>')
      .description(
        "run a command in a sandbox; output streams, the exit code is the command's (forkd exec SB -- ls -l /)",
      )
      .option('--shell', 'run CMD as one /bin/sh -c string instead of an argv')
      .option('--cwd <dir>', 'working directory in the guest')
      .option(
        '--env <K=V>',
        'environment variable (repeatable)',
        (v: string, a: string[]) => [...a, v],
        [] as string[],
      )
      .option(
        '--timeout-secs <n>',
        'kill the command after this long (0: no limit)',
        intArg('--timeout-secs'),
        0,
      )
      .option('--json', 'buffer the output and print one JSON result'),
  ).action(
    act<DaemonOpts & { shell?: boolean; cwd?: string; env: string[]; timeoutSecs: number }>(
      async (o, c, id, argv) => {
        const args = argv as unknown as string[];
        checkId(id!);
        const env: Record<string, string> = {};
        for (const kv of o.env) {
          const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(kv);
          if (!m)
            throw new ForkdError('bad_input', `--env '${kv}' is not NAME=VALUE`, 'e.g. --env LANG=C.UTF-8');
          env[m[1]!] = m[2]!;
        }
        const cmd = o.shell ? args.join(' ') : args;
        const opts = {
          timeoutSecs: o.timeoutSecs,
          ...(o.cwd ? { cwd: o.cwd } : {}),
          ...(o.env.length ? { env } : {}),
        };
        if (o.json) {
          const r = await c.execCommand(id!, cmd, opts);
          printJson(r);
          process.exitCode = exitCodeOf(r);
          return;
        }
        for await (const ev of c.execStream(id!, cmd, opts)) {
          if (ev.type === 'stdout') process.stdout.write(ev.data);
          else if (ev.type === 'stderr') process.stderr.write(ev.data);
          else if (ev.type === 'error')
            throw new ForkdError(
              'bad_input',
              `exec in ${id}: ${ev.error}`,
              'check the command and its path in the guest',
            );
          else if (ev.type === 'exit') process.exitCode = exitCodeOf(ev);
        }
      },
    ),
  );

  daemonOptions(
    program
      .command('eval <sandbox> <code>')
      .description("evaluate code in a sandbox's warm interpreter; prints the value (exit 1 on an exception)")
      .option('--lang <lang>', 'python or js', 'python')
      .option('--context <name>', 'a named interpreter state of its own')
      .option('--timeout-secs <n>', 'give up after this long', intArg('--timeout-secs'), 30)
      .option('--json', 'machine-readable output'),
  ).action(
    act<DaemonOpts & { lang: string; context?: string; timeoutSecs: number }>(async (o, c, id, code) => {
      checkId(id!);
      if (o.lang !== 'python' && o.lang !== 'js')
        throw new ForkdError('bad_input', `--lang must be python or js (got '${o.lang}')`, 'e.g. --lang js');
      const r = await c.evalCode(id!, code!, {
        language: o.lang,
        timeoutSecs: o.timeoutSecs,
        ...(o.context ? { context: o.context } : {}),
      });
      if (!r.ok) process.exitCode = 1;
      if (o.json) return printJson(r);
      if (r.stdout) process.stdout.write(r.stdout);
      if (r.stderr) process.stderr.write(r.stderr);
      if (r.error) process.stderr.write(`${r.traceback || `${r.error_type ?? 'Error'}: ${r.error}`}\n`);
      else if (r.result !== null) out(r.result);
    }),
  );

  daemonOptions(
    program
      .command('ping <sandbox>')
      .description("check a sandbox's agent answers; prints its round trip and what the guest runs")
      .option('--json', 'machine-readable output'),
  ).action(
    act<DaemonOpts>(async (o, c, id) => {
      checkId(id!);
      const t0 = performance.now();
      const p = await c.pingSandbox(id!);
      const rtt = Math.round((performance.now() - t0) * 10) / 10;
      if (o.json) return printJson({ ...p, round_trip_ms: rtt });
      const py = p.python as { ready?: boolean; version?: string; error?: string } | undefined;
      out(
        `✓ ${id} answered in ${rtt} ms: node ${String(p.node_version ?? '?')}, python ${py?.ready ? py.version : `none (${py?.error ?? 'not ready'})`}`,
      );
    }),
  );
}
