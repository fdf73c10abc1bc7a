import os from 'node:os';
import path from 'node:path';

/** Where forkd keeps things. Every path honours the XDG variables so tests and users can relocate it. */
export function dataDir(): string {
  const xdg = process.env.XDG_DATA_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'forkd');
  const home = process.env.HOME || os.homedir();
  if (home) return path.join(home, '.local', 'share', 'forkd');
  return '/tmp/.local/share/forkd';
}

export function snapshotsDir(): string {
  return path.join(dataDir(), 'snapshots');
}

/** Rebuildable artefacts (guest images, kernel packages, debootstrap trees, accelerator probe). */
export function cacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'forkd');
  const home = process.env.HOME || os.homedir();
  return path.join(home || '/tmp', '.cache', 'forkd');
}

/**
 * Work dirs of running parents and children (sockets, console logs, overlays). Kept short because
 * unix socket paths are limited to 107 bytes.
 */
export function runDir(): string {
  return process.env.FORKD_RUN_DIR || '/tmp';
}

/** Keys and trust settings ($XDG_CONFIG_HOME/forkd): signing keys, trusted public keys. */
export function configDir(): string {
  const xdg = process.env.XDG_CONFIG_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'forkd');
  const home = process.env.HOME || os.homedir();
  return path.join(home || '/tmp', '.config', 'forkd');
}
