import type { Command } from 'commander';
import { setupHost } from '../../host/setup.js';
import { createSnapshot } from '../../snapshot/create.js';
import { snapshotExists } from '../../snapshot/store.js';
import { fork } from '../../fork/fork.js';
import { stderrReporter } from '../../util/report.js';
import { ms } from '../../util/format.js';
import { fail, intArg, out } from '../output.js';

export function registerQuickstart(program: Command): void {
  program
    .command('quickstart')
    .description(
      'zero to first fork: install host packages, build the guest, snapshot it warm, fork N children that eval numpy',
    )
    .option('-n, --n <count>', 'children to fork', intArg('-n'), 10)
    .option('--recipe <name>', 'guest recipe', 'python-numpy')
    .option('--tag <tag>', 'snapshot tag to create / reuse', 'quickstart')
    .option('-y, --yes', 'install host packages without asking')
    .action(async (o: { n: number; recipe: string; tag: string; yes?: boolean }) => {
      try {
        const rep = stderrReporter();
        await setupHost({ yes: Boolean(o.yes) }, rep);
        if (snapshotExists(o.tag)) rep.ok(`reusing snapshot '${o.tag}'`);
        else await createSnapshot({ tag: o.tag, recipe: o.recipe }, rep);
        const r = await fork({ tag: o.tag, n: o.n, eval: 'numpy.zeros(5).tolist()' }, rep);
        for (const c of r.children)
          out(
            c.ok
              ? `  ✓ ${c.hostname}  ready ${ms(c.timings!.ready_ms)}  eval → ${c.eval?.result ?? c.eval?.error?.message}`
              : `  ✗ c${c.index}: ${c.error}`,
          );
        out(
          `✓ quickstart complete — ${r.ok}/${r.n} microVMs forked from one warm snapshot in ${ms(r.wall_ms)} [${r.accelerator}]`,
        );
        out(
          `  next: forkd fork --tag ${o.tag} -n 3 --exec "cat /etc/hostname" · forkd images · forkd doctor`,
        );
        if (r.failed) process.exit(1);
      } catch (e) {
        fail(e, false);
      }
    });
}
