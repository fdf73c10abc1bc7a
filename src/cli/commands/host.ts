import type { Command } from 'commander';
import { runDoctor, type Check } from '../../host/doctor.js';
import { setupHost } from '../../host/setup.js';
import { stderrReporter } from '../../util/report.js';
import { cacheDir, dataDir, runDir, snapshotsDir } from '../../util/paths.js';
import { fail, out, printJson } from '../output.js';

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
