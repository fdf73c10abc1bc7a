import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { cacheDir } from '../util/paths.js';
import { ForkdError } from '../util/errors.js';
import { diskUsage, freeBytes } from '../util/fs.js';
import { sha256File } from '../util/hash.js';
import type { Reporter } from '../util/report.js';
import { applyLayer } from './oci/apply-layer.js';
import { runConfigOf, type ImageRunConfig, type ResolvedImage } from './oci/manifest.js';
import { installRuntime, runtimeFiles, runtimeKey } from './agent-runtime.js';
import { loadRootfs, makeExt4, type RootfsImage } from './rootfs.js';
import { GUEST_IMAGE_CONFIG } from '../protocol/agent-api.js';
import { installPackages } from './chroot-install.js';

const IMAGE_ROOTFS_FORMAT = 'image-rootfs-v1';
/** What the agent reads at start for the image's defaults (Env, WorkingDir, User). */
const IMAGE_CONFIG_FILE = GUEST_IMAGE_CONFIG.slice(1);

export interface ImageRootfs extends RootfsImage {
  oci: {
    source: string;
    manifest_digest: string;
    config_digest: string;
    run: ImageRunConfig;
    extras: string[];
    timings_ms: Record<string, number>;
  };
}

/** Debian/apt or Alpine/apk package names (`--extra`). */
function checkExtras(extras: string[]): void {
  for (const p of extras)
    if (!/^[a-z0-9][a-z0-9+._-]*$/.test(p))
      throw new ForkdError(
        'bad_input',
        `'${p}' is not a valid package name`,
        'use names as apt-get or apk knows them',
      );
}

/**
 * The image's root filesystem as a forkd guest disk: layers applied in order, the agent runtime added
 * under /opt/forkd-runtime (nothing of the image's own is touched), `--extra` packages installed with
 * the image's own package manager, then an ext4 image. Cached by the image's config digest (which pins
 * every layer's content through its diff_ids) and forkd's own inputs.
 */
export async function ensureImageRootfs(
  img: ResolvedImage,
  opts: { extras?: string[]; sizeMib?: number },
  rep: Reporter,
): Promise<ImageRootfs> {
  const extras = [...new Set(opts.extras ?? [])].sort();
  checkExtras(extras);
  const rt = runtimeFiles();
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        f: IMAGE_ROOTFS_FORMAT,
        config: img.config_digest,
        extras,
        sizeMib: opts.sizeMib ?? null,
        runtime: runtimeKey(rt),
      }),
    )
    .digest('hex');
  const dir = path.join(cacheDir(), 'rootfs', `img-${key.slice(0, 16)}`);
  const have = loadRootfs(dir) as ImageRootfs | undefined;
  if (have?.oci) {
    rep.ok(`root filesystem of ${img.source} is cached (${key.slice(0, 16)})`);
    return have;
  }
  if (process.getuid?.() !== 0)
    throw new ForkdError(
      'host_unsupported',
      'unpacking an image keeps its owners: that needs root',
      'run forkd as root',
    );
  const compressed = img.layers.reduce((a, l) => a + l.size, 0);
  if (freeBytes(cacheDir()) < compressed * 4 + 512 * 1048576)
    throw new ForkdError(
      'out_of_space',
      `not enough free disk under ${cacheDir()} to unpack ${img.source}`,
      'free some space or point XDG_CACHE_HOME elsewhere',
    );
  const staging = `${dir}.staging-${process.pid}`;
  const tree = path.join(staging, 'tree');
  fs.rmSync(staging, { recursive: true, force: true });
  fs.mkdirSync(tree, { recursive: true, mode: 0o755 });
  const timings: Record<string, number> = {};
  try {
    let t = performance.now();
    rep.step(`unpacking ${img.layers.length} layer(s) of ${img.source}`);
    let done = 0;
    for (const [i, l] of img.layers.entries()) {
      const before = done;
      await applyLayer(
        tree,
        l.file,
        img.config.rootfs.diff_ids[i]!,
        `layer ${i + 1}/${img.layers.length} (${l.digest.slice(7, 19)})`,
        (n) => rep.progress('unpacking layers', before + n),
      );
      done += fs.statSync(l.file).size;
    }
    timings.unpack_ms = performance.now() - t;
    if (extras.length) {
      t = performance.now();
      await installPackages(tree, extras, rep);
      timings.extras_ms = performance.now() - t;
    }
    const run = runConfigOf(img.config);
    const rtBytes = installRuntime(tree, rt);
    fs.writeFileSync(path.join(tree, IMAGE_CONFIG_FILE), JSON.stringify(run, null, 2) + '\n', {
      mode: 0o644,
    });
    // The agent's home and the mount points our init uses; an image without them still boots.
    for (const d of ['root', 'tmp', 'proc', 'sys', 'dev', 'run', 'opt/forkd'])
      fs.mkdirSync(path.join(tree, d), { recursive: true, mode: d === 'tmp' ? 0o1777 : 0o755 });
    const used = diskUsage(tree);
    const sizeMib = opts.sizeMib ?? Math.max(1024, Math.ceil((used * 1.3) / 1048576) + 512);
    if (used > sizeMib * 1048576 * 0.95)
      throw new ForkdError(
        'bad_input',
        `${img.source} needs ${Math.ceil(used / 1048576)} MiB, more than --size-mib ${sizeMib}`,
        'pass a larger --size-mib',
      );
    rep.step(
      `making ext4 image (${sizeMib} MiB, sparse; ${Math.round(used / 1048576)} MiB used, of which agent runtime ${Math.round(rtBytes / 1048576)} MiB)`,
    );
    t = performance.now();
    const out = path.join(staging, 'rootfs.ext4');
    await makeExt4(tree, out, sizeMib);
    timings.ext4_ms = performance.now() - t;
    fs.rmSync(tree, { recursive: true, force: true });
    const meta: ImageRootfs = {
      key,
      path: path.join(dir, 'rootfs.ext4'),
      sizeMib,
      packages: extras,
      mirror: '',
      sha256: await sha256File(out),
      created_at: new Date().toISOString(),
      oci: {
        source: img.source,
        manifest_digest: img.manifest_digest,
        config_digest: img.config_digest,
        run,
        extras,
        timings_ms: Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v)])),
      },
    };
    fs.chmodSync(out, 0o444);
    fs.writeFileSync(path.join(staging, 'rootfs.json'), JSON.stringify(meta, null, 2));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(staging, dir);
    rep.ok(`root filesystem of ${img.source} (${key.slice(0, 16)}, ${sizeMib} MiB)`);
    return meta;
  } catch (e) {
    fs.rmSync(staging, { recursive: true, force: true });
    throw e;
  }
}
