import type { Command } from 'commander';
import { setupHost } from '../../host/setup.js';
import { createSnapshot } from '../../snapshot/create.js';
import { loadSnapshot, snapshotExists } from '../../snapshot/store.js';
import { deleteSnapshot, dependentsOf } from '../../snapshot/lineage.js';
import { buildImage } from '../../image/build.js';
import type { Reporter } from '../../util/report.js';
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
        if (await reusable(o.tag, o.recipe, rep)) rep.ok(`reusing snapshot '${o.tag}'`);
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

/**
 * Whether the quickstart's own snapshot can be forked as it is. One made from another guest image (an
 * older forkd's agent, another recipe) would still fork, but without what the current image brings
 * (a faster first answer, fixes), so it is made again, unless other snapshots build on it.
 */
async function reusable(tag: string, recipe: string, rep: Reporter): Promise<boolean> {
  if (!snapshotExists(tag)) return false;
  const meta = loadSnapshot(tag).meta;
  const image = await buildImage({ recipe }, rep);
  if (meta.guest.image_key === image.key && meta.guest.recipe === recipe) return true;
  const deps = dependentsOf(tag);
  if (deps.length) {
    rep.warn(
      `snapshot '${tag}' was made from another guest image, but ${deps.join(', ')} build on it: forking it as it is`,
    );
    return true;
  }
  rep.info(`snapshot '${tag}' was made from another guest image (an older forkd or recipe): making it again`);
  deleteSnapshot(tag);
  return false;
}
