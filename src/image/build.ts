import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { cacheDir } from '../util/paths.js';
import type { Reporter } from '../util/report.js';
import { ensureKernel, type GuestKernel } from './kernel.js';
import { ensureInitramfs } from './initramfs.js';
import { ensureRootfs, type RootfsImage } from './rootfs.js';
import { getRecipe, withExtras } from './recipes.js';
import { listDir } from '../util/fs.js';
import { ensureImageRootfs, type ImageRootfs } from './image-rootfs.js';
import { resolveImage } from './oci/resolve.js';

/** Everything needed to boot a parent: kernel, initramfs (modules + agent), root filesystem. */
export interface GuestImage {
  recipe: string;
  /** Content key over all inputs; a snapshot records it. */
  key: string;
  kernel: { package: string; version: string; release: string; vmlinux: string };
  initramfs: { path: string; key: string };
  rootfs: RootfsImage;
  /** Set for a guest made from an OCI/Docker image: where it came from and how it runs. */
  oci?: ImageRootfs['oci'];
  built_at: string;
}

export interface BuildOptions {
  recipe: string;
  extras?: string[];
  sizeMib?: number;
}

function imagesDir(): string {
  return path.join(cacheDir(), 'images');
}

/**
 * Build (or reuse) the guest image of a recipe. Each part is cached by its own inputs: changing the
 * agent rebuilds the initramfs only; changing packages rebuilds the root filesystem only.
 */
export async function buildImage(opts: BuildOptions, rep: Reporter): Promise<GuestImage> {
  const recipe = withExtras(getRecipe(opts.recipe), opts.extras ?? []);
  const sizeMib = opts.sizeMib ?? recipe.diskMib;
  const kernel: GuestKernel = await ensureKernel(rep);
  const initramfs = await ensureInitramfs(kernel, rep);
  const rootfs = await ensureRootfs(recipe, sizeMib, rep);
  return writeManifest(recipe.name, kernel, initramfs, rootfs);
}

/**
 * A guest from an OCI/Docker image (registry, docker save or OCI archive, OCI layout, Docker engine):
 * the same kernel and initramfs as the recipes, the image's own root filesystem plus the agent runtime.
 */
export async function buildImageFromOci(
  ref: string,
  opts: { extras?: string[]; sizeMib?: number },
  rep: Reporter,
): Promise<GuestImage> {
  const kernel = await ensureKernel(rep);
  const initramfs = await ensureInitramfs(kernel, rep);
  const resolved = await resolveImage(ref, rep);
  const rootfs = await ensureImageRootfs(resolved, opts, rep);
  return writeManifest(`image:${rootfs.oci.source}`, kernel, initramfs, rootfs, rootfs.oci);
}

function writeManifest(
  name: string,
  kernel: GuestKernel,
  initramfs: { path: string; key: string },
  rootfs: RootfsImage,
  oci?: ImageRootfs['oci'],
): GuestImage {
  const key = createHash('sha256')
    .update(`${kernel.package}\0${kernel.version}\0${initramfs.key}\0${rootfs.key}`)
    .digest('hex');
  const image: GuestImage = {
    recipe: name,
    key,
    kernel: {
      package: kernel.package,
      version: kernel.version,
      release: kernel.release,
      vmlinux: kernel.vmlinux,
    },
    initramfs,
    rootfs,
    ...(oci ? { oci } : {}),
    built_at: new Date().toISOString(),
  };
  fs.mkdirSync(imagesDir(), { recursive: true });
  const manifest = path.join(imagesDir(), oci ? `image-${rootfs.key.slice(0, 16)}.json` : `${name}.json`);
  fs.writeFileSync(manifest, JSON.stringify(image, null, 2));
  return image;
}

/** The most recently built image of each recipe (from the manifests `parent build` writes). */
export function listImages(): GuestImage[] {
  const files = listDir(imagesDir()).filter((f) => f.endsWith('.json'));
  const out: GuestImage[] = [];
  for (const f of files) {
    try {
      const img = JSON.parse(fs.readFileSync(path.join(imagesDir(), f), 'utf8')) as GuestImage;
      if (
        fs.existsSync(img.rootfs.path) &&
        fs.existsSync(img.kernel.vmlinux) &&
        fs.existsSync(img.initramfs.path)
      )
        out.push(img);
    } catch {
      /* skip a broken manifest */
    }
  }
  return out;
}
