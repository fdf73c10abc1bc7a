import type { Command } from 'commander';
import { buildImage, buildImageFromOci, listImages } from '../../image/build.js';
import { RECIPES } from '../../image/recipes.js';
import { stderrReporter } from '../../util/report.js';
import { bytes, table } from '../../util/format.js';
import { fail, intArg, out, printJson } from '../output.js';

export function registerParent(program: Command): void {
  const parent = program.command('parent').description('guest images that parents boot from');

  parent
    .command('build')
    .description(
      'build a guest image: Debian rootfs (debootstrap) + kernel + initramfs with the forkd agent; cached by inputs',
    )
    .option('--recipe <name>', 'what goes in the guest (see: forkd parent recipes)', 'python-numpy')
    .option(
      '--image <ref>',
      'an OCI/Docker image instead of a recipe (registry ref, docker-archive:FILE, oci:DIR, ...)',
    )
    .option(
      '--extra <pkg>',
      'extra Debian package (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--size-mib <n>', 'root disk size the guest sees (sparse)', intArg('--size-mib'))
    .option('--json', 'machine-readable output')
    .action(
      async (o: { recipe: string; image?: string; extra: string[]; sizeMib?: number; json?: boolean }) => {
        try {
          const t0 = Date.now();
          const sized = o.sizeMib ? { sizeMib: o.sizeMib } : {};
          const img = o.image
            ? await buildImageFromOci(o.image, { extras: o.extra, ...sized }, stderrReporter())
            : await buildImage({ recipe: o.recipe, extras: o.extra, ...sized }, stderrReporter());
          if (o.json) return printJson(img);
          out(`✓ guest image '${img.recipe}' ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
          out(`  kernel    ${img.kernel.release} (${img.kernel.package} ${img.kernel.version})`);
          out(`  initramfs ${img.initramfs.path}`);
          out(`  rootfs    ${img.rootfs.path} (${img.rootfs.sizeMib} MiB, ${img.rootfs.packages.join(' ')})`);
          out(
            o.image
              ? `  next: forkd snapshot --tag T --image ${o.image}`
              : `  next: forkd snapshot --tag py --recipe ${img.recipe}`,
          );
        } catch (e) {
          fail(e, Boolean(o.json));
        }
      },
    );

  parent
    .command('recipes')
    .description('list the guest recipes')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }) => {
      if (o.json) return printJson(Object.values(RECIPES));
      out(
        table(
          ['RECIPE', 'PACKAGES', 'DESCRIPTION'],
          Object.values(RECIPES).map((r) => [r.name, r.packages.join(','), r.description]),
        ),
      );
    });

  parent
    .command('list')
    .description('list built guest images')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }) => {
      const imgs = listImages();
      if (o.json) return printJson(imgs);
      if (!imgs.length) return void process.stderr.write('no guest images built yet (forkd parent build)\n');
      out(
        table(
          ['RECIPE', 'KERNEL', 'ROOTFS', 'DISK', 'BUILT'],
          imgs.map((i) => [
            i.recipe,
            i.kernel.release,
            i.rootfs.key.slice(0, 12),
            bytes(i.rootfs.sizeMib * 1048576),
            i.built_at,
          ]),
        ),
      );
    });
}
