import fs from 'node:fs';
import path from 'node:path';
import { snapshotsDir } from '../util/paths.js';
import { ForkdError } from '../util/errors.js';
import { writeFileDurable } from '../util/fs.js';
import { writeOwner } from '../host/workdir.js';
import { SnapshotMeta } from './metadata.js';
import { snapshotDir } from './store.js';

/**
 * The one way a snapshot comes into being (create, branch, compact; unpack writes its links' metadata
 * here too): files go into a staging dir next to the snapshots, owned by this process (so `cleanup`
 * can sweep it if we die); snapshot.json is written last; the dir is renamed into place only when
 * complete. A tag is therefore never half-made, and never shows as ready with files still missing.
 */
export interface StagedSnapshot {
  readonly tag: string;
  /** Where the snapshot's files go until commit. */
  readonly dir: string;
  /** Write snapshot.json (validated), then rename into place; returns the snapshot's final dir. */
  commit(meta: SnapshotMeta): string;
  /** Throw the staging dir away (idempotent). */
  abort(): void;
}

export function stageSnapshot(tag: string): StagedSnapshot {
  fs.mkdirSync(snapshotsDir(), { recursive: true });
  const dir = fs.mkdtempSync(path.join(snapshotsDir(), `.staging-${tag}-`));
  writeOwner(dir, 'parent', tag);
  return {
    tag,
    dir,
    commit(meta) {
      if (meta.tag !== tag) throw new Error(`snapshot metadata names '${meta.tag}', staged as '${tag}'`);
      writeSnapshotMeta(dir, meta);
      fs.rmSync(path.join(dir, 'owner.json'), { force: true });
      try {
        fs.renameSync(dir, snapshotDir(tag));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST')
          throw new ForkdError(
            'exists',
            `snapshot '${tag}' was created by someone else meanwhile`,
            `pick another tag or forkd rmi ${tag}`,
          );
        throw e;
      }
      return snapshotDir(tag);
    },
    abort() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** snapshot.json, schema-checked, written durably (temp file, fsync, rename) into `dir`. */
export function writeSnapshotMeta(dir: string, meta: SnapshotMeta): void {
  const checked = SnapshotMeta.parse(meta);
  writeFileDurable(path.join(dir, 'snapshot.json'), JSON.stringify(checked, null, 2) + '\n');
}
