/**
 * Image → warm snapshot, by phase, for a Debian image (the python-numpy recipe's root filesystem as a
 * one-layer image, pushed to a real registry on loopback; test/helpers/oci.ts), cold (empty blob and
 * root filesystem caches) and cached, side by side in one run:
 *   pull (manifest, config, layers into the blob cache) · unpack (layers applied) · ext4 (mkfs) ·
 *   boot (QEMU start → agent answers) · warm (→ Python ready) · snapshot total;
 * and the disk bytes each cached image costs (blobs + root filesystem, allocated).
 *
 *   npm run bench:image [-- --reps 2]
 */
import fs from 'node:fs';
import path from 'node:path';
import { isolatedBenchDirs, runBench, writeBenchResults } from './results.js';
import { buildImage } from '../src/image/build.js';
import { resolveImage } from '../src/image/oci/resolve.js';
import { blobPath } from '../src/image/oci/blobs.js';
import { createSnapshot } from '../src/snapshot/create.js';
import { deleteSnapshot } from '../src/snapshot/lineage.js';
import { cacheDir } from '../src/util/paths.js';
import { diskUsage } from '../src/util/fs.js';
import { median, table } from '../src/util/format.js';
import { silentReporter, stderrReporter } from '../src/util/report.js';
import { imageOf, layerFromExt4, pushImage, startRegistry } from '../test/helpers/oci.js';

const { base, cleanup } = isolatedBenchDirs('image-bench');
const reps = Number(process.argv[process.argv.indexOf('--reps') + 1]) || 2;
const r0 = (x: number) => Math.round(x);

/** The cached root filesystem made from the image with this config digest. */
function imageRootfsDir(configDigest: string): string | undefined {
  const root = path.join(cacheDir(), 'rootfs');
  return fs
    .readdirSync(root)
    .filter((d) => d.startsWith('img-') && fs.existsSync(path.join(root, d, 'rootfs.json')))
    .map((d) => path.join(root, d))
    .find((d) => fs.readFileSync(path.join(d, 'rootfs.json'), 'utf8').includes(configDigest));
}

runBench(async () => {
  const recipe = await buildImage({ recipe: 'python-numpy' }, stderrReporter());
  const img = imageOf([{ tar: layerFromExt4(recipe.rootfs.path, base), compression: 'gzip' }], {
    Env: ['BENCH=1'],
  });
  const reg = await startRegistry();
  const rows: Array<Record<string, number | string>> = [];
  try {
    await pushImage(reg.host, 'bench/debian', 'v1', img);
    const ref = `${reg.host}/bench/debian:v1`;
    for (let rep = 0; rep < reps; rep++)
      for (const mode of ['cold', 'cached'] as const) {
        if (mode === 'cold') {
          for (const b of [img.config, ...img.layers]) fs.rmSync(blobPath(b.digest), { force: true });
          const old = imageRootfsDir(img.config.digest);
          if (old) fs.rmSync(old, { recursive: true, force: true });
        }
        const t0 = performance.now();
        await resolveImage(ref, silentReporter);
        const pull = performance.now() - t0;
        const tag = `bench-${mode}-${rep}`;
        const t1 = performance.now();
        const r = await createSnapshot({ tag, image: ref }, silentReporter);
        const total = performance.now() - t1 + pull;
        const t = r.meta.timings;
        const rootfsDir = imageRootfsDir(img.config.digest);
        const oci = JSON.parse(fs.readFileSync(path.join(rootfsDir!, 'rootfs.json'), 'utf8')) as {
          oci: { timings_ms: Record<string, number> };
        };
        const built = mode === 'cold' ? oci.oci.timings_ms : {};
        rows.push({
          mode,
          rep,
          accel: r.meta.accelerator,
          pull_ms: r0(pull),
          unpack_ms: built.unpack_ms ?? 0,
          ext4_ms: built.ext4_ms ?? 0,
          boot_ms: r0(t.agent_ready_ms ?? 0),
          warm_ms: r0(t.warm_ms ?? 0),
          image_to_snapshot_ms: r0(total),
          blob_bytes: [img.config, ...img.layers].reduce(
            (a, b) => a + fs.statSync(blobPath(b.digest)).size,
            0,
          ),
          rootfs_bytes: diskUsage(rootfsDir!),
        });
        deleteSnapshot(tag);
        process.stderr.write(`rep ${rep + 1}/${reps} ${mode}: ${r0(total)} ms\n`);
      }
  } finally {
    await reg.stop();
  }
  const m = (mode: string, k: string) =>
    r0(median(rows.filter((r) => r.mode === mode).map((r) => Number(r[k]))));
  const accel = String(rows[0]?.accel);
  const cols = ['pull_ms', 'unpack_ms', 'ext4_ms', 'boot_ms', 'warm_ms', 'image_to_snapshot_ms'];
  console.log(
    `\nDebian image (${(img.layers[0]!.data.length / 1048576).toFixed(0)} MiB gzip layer) → warm snapshot [${accel}], medians of ${reps}`,
  );
  console.log(
    table(
      ['MODE', 'PULL', 'UNPACK', 'EXT4', 'BOOT', 'WARM', 'TOTAL', 'VS COLD', 'DISK (BLOBS + ROOTFS)'],
      ['cold', 'cached'].map((mode) => [
        mode,
        ...cols.map((k) => `${m(mode, k)} ms`),
        `${Math.round((m(mode, 'image_to_snapshot_ms') / m('cold', 'image_to_snapshot_ms')) * 100) / 100}×`,
        `${((m(mode, 'blob_bytes') + m(mode, 'rootfs_bytes')) / 1048576).toFixed(0)} MiB`,
      ]),
    ),
  );
  const file = writeBenchResults('image', { accel, reps, rows });
  console.log(`\n${file}`);
}, cleanup);
