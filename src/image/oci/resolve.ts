import type { Reporter } from '../../util/report.js';
import { importArchiveFile, importFromDockerDaemon, importOciLayout } from './archive.js';
import type { ResolvedImage } from './manifest.js';
import { pullRegistryImage } from './registry.js';
import { parseImageSource } from './reference.js';

/** Any image reference forkd takes, to a verified image in the blob cache. */
export function resolveImage(ref: string, rep: Reporter): Promise<ResolvedImage> {
  const src = parseImageSource(ref);
  switch (src.kind) {
    case 'registry':
      return pullRegistryImage(src, rep);
    case 'docker-archive':
      return importArchiveFile(src.file, null, rep);
    case 'oci-archive':
      return importArchiveFile(src.file, src.ref, rep);
    case 'oci-layout':
      return importOciLayout(src.dir, src.ref, rep);
    case 'docker-daemon':
      return importFromDockerDaemon(src.name, rep);
  }
}
