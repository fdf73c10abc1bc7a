import type { Command } from 'commander';
import { deriveSnapshot } from '../../fork/derive.js';
import { snapshotDetail, type SnapshotDetail } from '../../snapshot/lineage.js';
import { compactSnapshot } from '../../snapshot/compact.js';
import { stderrReporter } from '../../util/report.js';
import { bytes, ms } from '../../util/format.js';
import { ForkdError } from '../../util/errors.js';
import { controllerFrom, daemonError, daemonOptions } from './daemon.js';
import { fail, intArg, out, printJson } from '../output.js';

/** Diff chains: snapshot-diff (build a link), snapshot-info (where a tag sits), snapshot-compact (flatten). */
interface DiffOpts {
  from: string;
  tag: string;
  exec?: string;
  eval?: string;
  execTimeoutSecs: number;
  json?: boolean;
  daemonUrl?: string;
  daemonToken?: string;
}

/** The reference's route: the same steps through a running daemon's REST API. */
async function deriveViaDaemon(o: DiffOpts): Promise<Record<string, unknown>> {
  const c = controllerFrom(o, (o.execTimeoutSecs + 300) * 1000);
  let id: string | undefined;
  try {
    const [sb] = await c.spawnSandboxes({ snapshotTag: o.from, n: 1 });
    if (!sb?.ok || !sb.id)
      throw new ForkdError('vmm_failed', `the transient sandbox did not start: ${sb?.error ?? 'unknown'}`);
    id = sb.id;
    if (o.exec) {
      const r = await c.execCommand(id, o.exec, { timeoutSecs: o.execTimeoutSecs });
      if (r.exit_code !== 0)
        throw new ForkdError(
          'bad_input',
          `--exec exited with code ${r.exit_code}; no snapshot was made\n--- stdout\n${r.stdout.slice(-1500)}\n--- stderr\n${r.stderr.slice(-1500)}`,
        );
    }
    if (o.eval) {
      const r = await c.evalCode(id, o.eval);
      if (r.error) throw new ForkdError('bad_input', `--eval failed: ${r.error}; no snapshot was made`);
    }
    const b = await c.branchSandbox(id, { tag: o.tag, mode: 'diff', parentTag: o.from });
    return { ...b, parent_tag: o.from };
  } catch (e) {
    throw daemonError(e, c.baseUrl);
  } finally {
    if (id) await c.killSandbox(id).catch(() => {});
  }
}

export function registerLineage(program: Command): void {
  daemonOptions(
    program
      .command('snapshot-diff')
      .description(
        'derive a chain link: fork a transient sandbox from --from, run --exec/--eval in it, keep only what changed',
      )
      .requiredOption('--from <tag>', 'base snapshot')
      .requiredOption('--tag <tag>', 'tag of the new link (must not exist)')
      .option('--exec <cmd>', 'shell command to run in the sandbox (must exit 0), e.g. "pip install pandas"')
      .option(
        '--eval <code>',
        'Python to run in the warm interpreter afterwards (e.g. "import pandas"): state children inherit',
      )
      .option(
        '--exec-timeout-secs <s>',
        'give up on --exec after this long',
        intArg('--exec-timeout-secs'),
        600,
      )
      .option('--json', 'machine-readable output'),
  ).action(async (o: DiffOpts) => {
    try {
      if (o.daemonUrl || process.env.FORKD_URL) {
        const r = await deriveViaDaemon(o);
        if (o.json) return printJson(r);
        for (const k of ['tag', 'dir', 'parent_tag', 'pause_ms', 'diff_physical_bytes'])
          out(`${`${k}:`.padEnd(21)}${String(r[k] ?? '-')}`);
        return;
      }
      const r = await deriveSnapshot(
        {
          from: o.from,
          tag: o.tag,
          ...(o.exec !== undefined ? { exec: o.exec } : {}),
          ...(o.eval !== undefined ? { eval: o.eval } : {}),
          execTimeoutSecs: o.execTimeoutSecs,
        },
        stderrReporter(),
      );
      if (o.json)
        return printJson({
          tag: r.meta.tag,
          dir: r.dir,
          parent_tag: r.meta.lineage.parent_tag,
          chain_depth: r.meta.lineage.depth,
          pause_ms: r.pauseMs,
          diff_pages: r.diffPages,
          diff_physical_bytes: r.diffPhysicalBytes,
          exec_ms: Math.round(r.execMs),
          total_ms: Math.round(r.totalMs),
          accelerator: r.meta.accelerator,
        });
      const a = r.meta.accelerator;
      out(`tag:                 ${r.meta.tag}`);
      out(`dir:                 ${r.dir}`);
      out(`parent_tag:          ${r.meta.lineage.parent_tag}  (chain depth ${r.meta.lineage.depth})`);
      out(`pause_ms:            ${r.pauseMs} [${a}]`);
      out(
        `diff_physical_bytes: ${r.diffPhysicalBytes} (${bytes(r.diffPhysicalBytes)}, ${r.diffPages} pages)`,
      );
      out(`total:               ${ms(r.totalMs)} [${a}]`);
      out(`✓ link '${r.meta.tag}' ready. Try: forkd fork --tag ${r.meta.tag} -n 10`);
    } catch (e) {
      fail(e, Boolean(o.json));
    }
  });

  program
    .command('snapshot-info')
    .description('where a snapshot sits in its chain: parent, ancestors, dependents, sizes')
    .argument('<tag>', 'snapshot tag')
    .option('--json', 'machine-readable output')
    .action((tag: string, o: { json?: boolean }) => {
      try {
        const d = snapshotDetail(tag);
        if (o.json) return printJson(d);
        printDetail(d);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('snapshot-compact')
    .description('flatten a chain head into a new self-contained snapshot (no parents needed)')
    .requiredOption('--from <tag>', 'chain head to flatten')
    .requiredOption('--to <tag>', 'tag of the flat copy (must not exist; must differ from --from)')
    .option('--json', 'machine-readable output')
    .action(async (o: { from: string; to: string; json?: boolean }) => {
      try {
        const meta = await compactSnapshot(o.from, o.to);
        const d = snapshotDetail(meta.tag);
        if (o.json) return printJson({ ...d, compacted_from: o.from, compact_ms: meta.timings.compact_ms });
        out(`tag:             ${d.tag}`);
        out(`dir:             ${d.dir}`);
        out(`source lineage:  compact:${o.from}`);
        out(
          `memory:          ${bytes(d.memory_logical_bytes)} logical / ${bytes(d.memory_physical_bytes)} on disk`,
        );
        out(
          `✓ '${d.tag}' is flat (no parent) in ${ms(meta.timings.compact_ms ?? 0)}. Try: forkd fork --tag ${d.tag} -n 10`,
        );
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });
}

function printDetail(d: SnapshotDetail): void {
  out(`tag:                 ${d.tag}`);
  out(`dir:                 ${d.dir}`);
  out(`created:             ${d.created_at}  [${d.accelerator}]`);
  out(`chain depth:         ${d.chain_depth}`);
  out(`parent_tag:          ${d.parent_tag ?? '(none — this is a base snapshot)'}`);
  if (d.parent_content_hash)
    out(
      `parent_content_hash: ${d.parent_content_hash
        .split(':')
        .map((h) => h.slice(0, 12))
        .join(':')}`,
    );
  out(
    `memory (${d.memory_kind}):`.padEnd(21) +
      `${bytes(d.memory_logical_bytes)} logical / ${bytes(d.memory_physical_bytes)} on disk`,
  );
  out(`vmstate:             ${bytes(d.vmstate_bytes)}`);
  out(`disk layer:          ${bytes(d.disk_bytes)} on disk`);
  out(`own bytes:           ${bytes(d.own_bytes)} (plus the shared ${bytes(d.base_bytes)} root disk)`);
  out(`ancestors:           ${d.ancestors.length ? `${d.ancestors.join(' → ')} (root → parent)` : '(none)'}`);
  out(`dependents:          ${d.dependents.length ? d.dependents.join(', ') : '(none)'}`);
  if (d.dependents.length)
    process.stderr.write(
      `⚠ deleting '${d.tag}' would orphan ${d.dependents.join(', ')}: use forkd rmi --cascade, or compact them first\n`,
    );
}
