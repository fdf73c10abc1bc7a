import type { Command } from 'commander';
import { fork, type ChildReport, type ForkReport } from '../../fork/fork.js';
import { cleanup } from '../../engine/sweep.js';
import { stderrReporter } from '../../util/report.js';
import { bytes, ms, table } from '../../util/format.js';
import { fail, intArg, numArg, out, printJson } from '../output.js';

interface ForkOpts {
  tag: string;
  n: number;
  settleSecs: number;
  keepWorkdir?: boolean;
  exec?: string;
  execTimeoutSecs?: number;
  eval?: string;
  evalLang: 'python' | 'js';
  json?: boolean;
}

function childLine(c: ChildReport): string {
  if (!c.ok) return `  ✗ c${c.index}  ${c.error}`;
  const t = c.timings!;
  let line = `  ✓ c${c.index}  ${c.hostname}  ready ${ms(t.ready_ms)} [${c.accel}] (spawn ${ms(t.spawn_ms)} · load ${ms(t.load_ms)} · cont ${ms(t.cont_ms)} · agent ${ms(t.agent_ms)} · identity ${ms(t.identity_ms)})`;
  if (c.eval)
    line += c.eval.ok
      ? `\n      eval → ${c.eval.result}`
      : `\n      eval ✗ ${c.eval.error?.type}: ${c.eval.error?.message}`;
  if (c.eval?.stdout)
    line += `\n      stdout: ${c.eval.stdout.trimEnd().replaceAll('\n', '\n              ')}`;
  if (c.exec) {
    const x = c.exec;
    line += `\n      exec exit=${x.exit_code ?? x.signal}${x.timed_out ? ' (timed out)' : ''} in ${ms(x.duration_ms)}`;
    if (x.stdout) line += `\n      stdout: ${x.stdout.trimEnd().replaceAll('\n', '\n              ')}`;
    if (x.stderr) line += `\n      stderr: ${x.stderr.trimEnd().replaceAll('\n', '\n              ')}`;
  }
  return line;
}

/** A child "failed" if it did not come up or its command/eval failed. */
function childFailed(c: ChildReport): boolean {
  return !c.ok || (c.exec !== undefined && c.exec.exit_code !== 0) || (c.eval !== undefined && !c.eval.ok);
}

export function registerFork(program: Command): void {
  program
    .command('fork')
    .description('start N copy-on-write children from a snapshot; optionally run a command / eval in each')
    .requiredOption('--tag <tag>', 'snapshot tag to fork from')
    .requiredOption('-n, --n <count>', 'number of children (1-1000)', intArg('-n'))
    .option(
      '--settle-secs <s>',
      'seconds to let children run before shutting them down',
      numArg('--settle-secs'),
      0,
    )
    .option('--exec <cmd>', 'shell command to run in every child (/bin/sh -c)')
    .option(
      '--exec-timeout-secs <s>',
      "kill the command's process group after this long",
      intArg('--exec-timeout-secs'),
      600,
    )
    .option('--eval <code>', "code to evaluate in every child's warm interpreter")
    .option('--eval-lang <lang>', 'python or js', 'python')
    .option('--keep-workdir', 'keep per-child sockets, console logs and overlays after shutdown')
    .option('--json', 'machine-readable output (one JSON document at the end)')
    .action(async (o: ForkOpts) => {
      try {
        if (o.evalLang !== 'python' && o.evalLang !== 'js') {
          const { ForkdError } = await import('../../util/errors.js');
          throw new ForkdError(
            'bad_input',
            `--eval-lang must be python or js (got '${o.evalLang}')`,
            '--eval-lang js',
          );
        }
        const rep = stderrReporter();
        const r: ForkReport = await fork(
          {
            tag: o.tag,
            n: o.n,
            settleSecs: o.settleSecs,
            keepWorkdir: Boolean(o.keepWorkdir),
            ...(o.exec !== undefined ? { exec: o.exec, execTimeoutSecs: o.execTimeoutSecs ?? 600 } : {}),
            ...(o.eval !== undefined ? { eval: o.eval, evalLanguage: o.evalLang } : {}),
            onChild: o.json ? undefined : (c) => out(childLine(c)),
          },
          rep,
        );
        const failed = r.children.filter(childFailed).length;
        if (o.json) printJson(r);
        else {
          const answered = r.children.filter((c) => c.answeredMs !== undefined).map((c) => c.answeredMs!);
          out(
            `✓ ${r.ok}/${r.n} children ready in ${ms(r.wall_ms)} wall [${r.accelerator}] · ready p50 ${ms(r.ready_p50_ms)} · max ${ms(r.ready_max_ms)}`,
          );
          if (answered.length && (o.exec || o.eval))
            out(`  all answered by ${ms(Math.max(...answered))} after start [${r.accelerator}]`);
          if (o.settleSecs > 0) out(`  ${r.alive_after_settle}/${r.ok} alive after ${o.settleSecs}s settle`);
          if (o.keepWorkdir) out(`  work dir kept: ${r.work_dir}`);
          if (failed) process.stderr.write(`✗ ${failed} child(ren) failed\n`);
        }
        if (failed) process.exit(1);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('cleanup')
    .description('remove what crashed runs left behind (dry run unless --yes); never touches a live run')
    .option('-y, --yes', 'actually kill and remove')
    .option('--json', 'machine-readable output')
    .action(async (o: { yes?: boolean; json?: boolean }) => {
      try {
        const items = await cleanup(Boolean(o.yes));
        if (o.json) return printJson({ applied: Boolean(o.yes), items });
        if (!items.length) return out('nothing to clean up');
        out(
          table(
            ['ACTION', 'KIND', 'SIZE', 'PATH', 'WHY'],
            items.map((i) => [i.action, i.kind, bytes(i.bytes), i.path, i.reason]),
          ),
        );
        const todo = items.filter((i) => i.action !== 'SKIP');
        if (!o.yes && todo.length)
          out(`\ndry run: ${todo.length} item(s) would be removed; re-run with --yes`);
        else if (todo.length) out(`\n✓ removed ${todo.length} item(s)`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });
}
