import path from 'node:path';
import { runOk } from '../util/proc.js';

/**
 * Create a qcow2 overlay over `backing`. A relative backing path is resolved against the overlay's own
 * directory (so a snapshot dir can be renamed or moved); an absolute one is kept as is.
 */
export async function createOverlay(
  overlay: string,
  backing: string,
  backingFormat: 'raw' | 'qcow2',
): Promise<void> {
  await runOk(
    'qemu-img',
    ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, path.basename(overlay)],
    {
      cwd: path.dirname(overlay),
    },
  );
}
