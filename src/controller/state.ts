import fs from 'node:fs';
import { writeFileDurable } from '../util/fs.js';
import path from 'node:path';
import { z } from 'zod';
import { EgressPolicySchema } from '../network/egress-policy.js';

/**
 * The daemon's persistent state (state.json). Written atomically (temp file + fsync + rename) after
 * every change, so a crash at any instant leaves either the old or the new state. Live handles (QMP,
 * agent connections) are not state: they are re-established from these records after a restart.
 */
export const SandboxRecord = z.object({
  id: z.string(),
  snapshot_tag: z.string(),
  created_at_unix: z.number(),
  pid: z.number().int(),
  /** process start time (clock ticks): tells our QEMU from a recycled pid after a restart */
  pid_start: z.number().nullable(),
  work_dir: z.string(),
  /** the memory image the child maps (snapshot memory or an assembled chain image) */
  memory_file: z.string(),
  /** the overlay the guest currently writes (changes with every branch) */
  active_disk: z.string(),
  /** the guest's Python worker serves its own port (MachineConfig.pythonPort): eval goes there */
  python_port: z.boolean().default(false),
  disk_generation: z.number().int().default(0),
  tap: z.string().nullable(),
  netns: z.string().nullable(),
  net_index: z.number().int().nullable(),
  guest_addr: z.string().nullable(),
  memory_limit_mib: z.number().int().nullable(),
  cgroup: z.string().nullable(),
  has_branched: z.boolean(),
  last_branch_memory_path: z.string().nullable(),
  branch_count: z.number().int(),
  /** seconds of life from creation / last extension; null = no timeout */
  timeout_secs: z.number().nullable(),
  expires_at_unix: z.number().nullable(),
  envs: z.record(z.string(), z.string()).default({}),
  metadata: z.record(z.string(), z.string()).default({}),
  workspace: z.string().nullable().default(null),
  /** The E2B template id it was created from, when created through the E2B API. */
  template_id: z.string().nullable().default(null),
  /** Checked on every request of the E2B sandbox plane (envd's X-Access-Token); made on first use. */
  access_token: z.string().nullable().default(null),
  /** Set while its vCPUs are stopped (E2B pause): no CPU, memory kept, no timeout running. */
  paused_at_unix: z.number().nullable().default(null),
  /** Its egress policy (network/egress-policy.ts) when it has a network namespace; null without one. */
  egress: EgressPolicySchema.nullable().default(null),
});
export type SandboxRecord = z.infer<typeof SandboxRecord>;

export const WorkspaceRecord = z.object({
  id: z.string(),
  name: z.string(),
  source_snapshot_tag: z.string(),
  current_state_tag: z.string().nullable(),
  status: z.enum(['running', 'suspended', 'stale']),
  live_sandbox_id: z.string().nullable(),
  created_at_unix: z.number(),
  last_active_unix: z.number(),
  last_branch_memory_path: z.string().nullable(),
  per_child_netns: z.boolean(),
  /** The egress policy its sandboxes get; null: the one its snapshot carries (or none). */
  egress: EgressPolicySchema.nullable().default(null),
  memory_limit_mib: z.number().int().nullable(),
  envs: z.record(z.string(), z.string()).default({}),
  suspend_count: z.number().int().default(0),
});
export type WorkspaceRecord = z.infer<typeof WorkspaceRecord>;

/** Snapshots the daemon made (branch results): status and timings the snapshot files do not carry. */
export const SnapshotRecord = z.object({
  tag: z.string(),
  status: z.enum(['writing', 'ready', 'failed']),
  created_at_unix: z.number(),
  branched_from: z.string().nullable(),
  mode: z.string().nullable(),
  pause_ms: z.number().nullable(),
  diff_physical_bytes: z.number().nullable(),
  warning: z.string().nullable(),
});
export type SnapshotRecord = z.infer<typeof SnapshotRecord>;

const StateFile = z.object({
  version: z.literal(1),
  sandboxes: z.record(z.string(), SandboxRecord),
  workspaces: z.record(z.string(), WorkspaceRecord),
  snapshots: z.record(z.string(), SnapshotRecord),
});
type StateFile = z.infer<typeof StateFile>;

export class StateStore {
  sandboxes = new Map<string, SandboxRecord>();
  workspaces = new Map<string, WorkspaceRecord>();
  snapshots = new Map<string, SnapshotRecord>();

  constructor(readonly file: string) {}

  /** Load the file; a missing file is an empty state, an unreadable one is kept aside and reported. */
  load(log: (msg: string) => void): void {
    let raw: string;
    try {
      raw = fs.readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    const parsed = StateFile.safeParse(safeJson(raw));
    if (!parsed.success) {
      const aside = `${this.file}.corrupt-${Date.now()}`;
      fs.renameSync(this.file, aside);
      log(`state file ${this.file} is unreadable; moved to ${aside} and starting empty`);
      return;
    }
    this.sandboxes = new Map(Object.entries(parsed.data.sandboxes));
    this.workspaces = new Map(Object.entries(parsed.data.workspaces));
    this.snapshots = new Map(Object.entries(parsed.data.snapshots));
  }

  save(): void {
    const data: StateFile = {
      version: 1,
      sandboxes: Object.fromEntries(this.sandboxes),
      workspaces: Object.fromEntries(this.workspaces),
      snapshots: Object.fromEntries(this.snapshots),
    };
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    writeFileDurable(this.file, JSON.stringify(data, null, 2) + '\n', 0o600);
  }
}

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}
