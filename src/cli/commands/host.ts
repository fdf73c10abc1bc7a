import type { Command } from 'commander';
import { runDoctor, type Check } from '../../host/doctor.js';
import { setupHost } from '../../host/setup.js';
import { stderrReporter } from '../../util/report.js';
import { cacheDir, dataDir, runDir, snapshotsDir } from '../../util/paths.js';
import { fail, intArg, out, printJson } from '../output.js';
import { wpBench } from '../../snapshot/wp-bench.js';
import { table } from '../../util/format.js';

const ICON: Record<Check['status'], string> = {
  PASS: '✓ PASS',
  WARN: '⚠ WARN',
  FAIL: '✗ FAIL',
  SKIP: '· SKIP',
};

export function registerHost(program: Command): void {
  program
    .command('doctor')
    .description('check what this host can do, with the fix for what it cannot')
    .option('--json', 'machine-readable output')
    .option('--no-probe', 'do not boot a guest kernel to probe KVM (uses the cached result)')
    .action(async (o: { json?: boolean; probe: boolean }) => {
      try {
        const checks = await runDoctor({ probe: o.probe });
        const count = (s: Check['status']) => checks.filter((c) => c.status === s).length;
        const summary = {
          pass: count('PASS'),
          warn: count('WARN'),
          fail: count('FAIL'),
          skip: count('SKIP'),
        };
        if (o.json) printJson({ checks, summary });
        else {
          const w = Math.max(...checks.map((c) => c.name.length));
          for (const c of checks) {
            out(`${ICON[c.status]}  ${c.name.padEnd(w)}  ${c.detail}`);
            if (c.hint && c.status !== 'PASS') out(`${' '.repeat(8 + w)}→ ${c.hint}`);
          }
          out(`\npass=${summary.pass} warn=${summary.warn} fail=${summary.fail} skip=${summary.skip}`);
        }
        if (summary.fail) process.exit(1);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('wp-bench')
    .description(
      'measure the write-protect machinery live branching relies on: arm time and copy throughput for a guest RAM region',
    )
    .option('--region-mib <mib>', 'guest RAM region size in MiB', intArg('--region-mib'), 512)
    .option('--reps <n>', 'repetitions of each mode (alternating)', intArg('--reps'), 5)
    .option('--json', 'machine-readable output')
    .action(async (o: { regionMib: number; reps: number; json?: boolean }) => {
      try {
        const r = await wpBench({ regionMib: o.regionMib, reps: o.reps }, stderrReporter());
        if (o.json) return printJson(r);
        out(
          table(
            ['mode', 'region', 'guest stopped', 'copy', 'throughput', 'accel'],
            [
              [
                'live (write-protect)',
                `${r.region_mib} MiB`,
                `${r.live_arm_ms} ms (arm)`,
                `${r.live_copy_ms} ms, guest running`,
                `${r.live_copy_mib_s} MiB/s`,
                r.accel,
              ],
              [
                'full (stopped copy)',
                `${r.region_mib} MiB`,
                `${r.full_pause_ms} ms`,
                `${r.full_pause_ms} ms, guest stopped`,
                `${r.full_copy_mib_s} MiB/s`,
                r.accel,
              ],
            ],
          ),
        );
        out(`medians of ${r.reps} reps each, run alternately`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('setup')
    .description('install the Debian packages forkd needs on this host (apt-get)')
    .option('-y, --yes', 'do not ask before installing')
    .option('--json', 'machine-readable output')
    .action(async (o: { yes?: boolean; json?: boolean }) => {
      try {
        const r = await setupHost({ yes: Boolean(o.yes) }, stderrReporter());
        if (o.json) printJson(r);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('where')
    .description('print the snapshot data directory')
    .option('--json', 'all forkd directories as JSON')
    .action((o: { json?: boolean }) => {
      if (o.json) printJson({ data: dataDir(), snapshots: snapshotsDir(), cache: cacheDir(), run: runDir() });
      else out(dataDir());
    });
}
