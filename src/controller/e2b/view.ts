/**
 * forkd's sandboxes and snapshots as E2B's control plane shows them (its `Sandbox`, `SandboxDetail`,
 * `ListedSandbox` JSON). One daemon, one state: every sandbox is listed, whichever API created it.
 */
import { randomBytes } from 'node:crypto';
import { loadSnapshot } from '../../snapshot/store.js';
import type { Controller } from '../controller.js';
import type { SandboxRecord } from '../state.js';

/**
 * The envd version forkd reports. The SDK switches features on it: ≥ 0.4.0 the server picks the default
 * user, ≥ 0.5.2 closeStdin, ≥ 0.5.7 octet-stream and streamed uploads. Features of later versions (file
 * metadata, watch entries) are not served, so it must not claim them.
 */
export const ENVD_VERSION = '0.5.7';
/** E2B's default sandbox lifetime when create or connect gives none, seconds. */
export const DEFAULT_TIMEOUT_S = 300;
/** endAt of a sandbox without a timeout (forkd's own API allows that): far away, but a valid date. */
const NO_END = '9999-12-31T23:59:59.000Z';

export interface E2bOptions {
  /** E2B template names → snapshot tags (`base`, `code-interpreter-v1`, ...); any tag is a template too. */
  templates: Map<string, string>;
}

/** The sandbox's envd access token, made on first use (sandboxes created by forkd's API have none yet). */
export function accessToken(ctl: Controller, rec: SandboxRecord): string {
  if (!rec.access_token) {
    rec.access_token = randomBytes(24).toString('hex');
    ctl.state.save();
  }
  return rec.access_token;
}

const iso = (unix: number) => new Date(unix * 1000).toISOString();

/** What create, connect and fork return. */
export function sandboxJson(ctl: Controller, rec: SandboxRecord) {
  return {
    sandboxID: rec.id,
    templateID: rec.template_id ?? rec.snapshot_tag,
    clientID: 'forkd',
    envdVersion: ENVD_VERSION,
    envdAccessToken: accessToken(ctl, rec),
    // The code interpreter authenticates its /contexts calls with this one only.
    trafficAccessToken: accessToken(ctl, rec),
    domain: null,
  };
}

export function machineOfTag(tag: string): { cpuCount: number; memoryMB: number; diskSizeMB: number } {
  try {
    const m = loadSnapshot(tag).meta;
    return {
      cpuCount: m.machine.vcpus,
      memoryMB: m.machine.mem_mib,
      diskSizeMB: Math.round(m.files.base.size / 1048576),
    };
  } catch {
    return { cpuCount: 1, memoryMB: 0, diskSizeMB: 0 }; // its snapshot was deleted (force) since
  }
}

/** getInfo's SandboxDetail, and one element of list. */
export function sandboxDetailJson(ctl: Controller, rec: SandboxRecord, state: 'running' | 'paused') {
  return {
    ...sandboxJson(ctl, rec),
    alias: rec.template_id ?? rec.snapshot_tag,
    startedAt: iso(rec.created_at_unix),
    endAt: rec.expires_at_unix === null ? NO_END : iso(rec.expires_at_unix),
    state,
    ...machineOfTag(rec.snapshot_tag),
    metadata: rec.metadata,
    volumeMounts: [],
    ...(rec.egress
      ? {
          allowInternetAccess: rec.egress.allow_internet_access,
          network: { allowOut: rec.egress.allow_out, denyOut: rec.egress.deny_out },
        }
      : {}),
  };
}

export function endAtMs(rec: SandboxRecord): number {
  return rec.expires_at_unix === null ? Date.parse(NO_END) : rec.expires_at_unix * 1000;
}
