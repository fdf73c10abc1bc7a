/**
 * Watching a directory (E2B's `files.watchDir`): inotify through fs.watch, one watcher per directory
 * (the guest's Node has no recursive watch on Linux), new subdirectories added as they appear. Events
 * name the path relative to the watched directory; a rename shows as a remove and a create.
 */
import fs from 'node:fs';
import path from 'node:path';

export type WatchOp = 'create' | 'write' | 'remove';

/** Directories watched at once by one request: beyond it, deeper ones are not watched. */
const MAX_DIRS = 10_000;

export class DirWatch {
  private readonly watchers = new Map<string, fs.FSWatcher>();
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly recursive: boolean,
    private readonly emit: (name: string, op: WatchOp) => void,
  ) {
    this.add(root);
  }

  private add(dir: string): void {
    if (this.closed || this.watchers.has(dir) || this.watchers.size >= MAX_DIRS) return;
    let w: fs.FSWatcher;
    try {
      w = fs.watch(dir, { persistent: false }, (kind, file) => this.onEvent(dir, kind, file));
    } catch {
      return; // vanished, or not readable
    }
    w.on('error', () => this.drop(dir));
    this.watchers.set(dir, w);
    if (!this.recursive) return;
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      /* vanished meanwhile */
    }
    for (const e of entries) if (e.isDirectory()) this.add(path.join(dir, e.name));
  }

  private drop(dir: string): void {
    for (const [d, w] of this.watchers)
      if (d === dir || d.startsWith(dir + '/')) {
        w.close();
        this.watchers.delete(d);
      }
  }

  private onEvent(dir: string, kind: string, file: string | Buffer | null): void {
    if (this.closed || file === null) return;
    const full = path.join(dir, file.toString());
    const rel = path.relative(this.root, full);
    if (kind === 'change') return this.emit(rel, 'write');
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(full);
    } catch {
      /* gone */
    }
    if (!st) {
      this.drop(full);
      return this.emit(rel, 'remove');
    }
    this.emit(rel, 'create');
    if (this.recursive && st.isDirectory()) this.add(full);
  }

  close(): void {
    this.closed = true;
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}
