/**
 * What an OCI image says about how to run it (Env, WorkingDir, User), written by the host next to the
 * agent runtime when it made the root filesystem (image/image-rootfs.ts). Absent in recipe guests.
 */
import fs from 'node:fs';
import { GUEST_IMAGE_CONFIG } from '../../protocol/agent-api.js';

export interface ImageDefaults {
  env: Record<string, string>;
  working_dir: string | null;
  user: string | null;
}

export function loadImageDefaults(file = GUEST_IMAGE_CONFIG): ImageDefaults {
  const none: ImageDefaults = { env: {}, working_dir: null, user: null };
  let raw: { env?: unknown; working_dir?: unknown; user?: unknown };
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof raw;
  } catch {
    return none;
  }
  const env: Record<string, string> = {};
  if (Array.isArray(raw.env))
    for (const e of raw.env) {
      const m = typeof e === 'string' ? /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/s.exec(e) : null;
      if (m) env[m[1]!] = m[2]!;
    }
  return {
    env,
    working_dir:
      typeof raw.working_dir === 'string' && raw.working_dir.startsWith('/') ? raw.working_dir : null,
    user: typeof raw.user === 'string' && raw.user ? raw.user : null,
  };
}

/** The first of these that exists: images keep python3 and sh in different places (or not at all). */
export function firstExisting(paths: string[]): string | undefined {
  return paths.find((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** A shell for `cmd` strings: the image's own, else the busybox our init brought. */
export function shellPath(): string {
  return firstExisting(['/bin/sh', '/usr/bin/sh']) ?? '/opt/forkd/bin/sh';
}

export function python3Path(): string | undefined {
  return firstExisting(['/usr/bin/python3', '/usr/local/bin/python3', '/bin/python3']);
}
