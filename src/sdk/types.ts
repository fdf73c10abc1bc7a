/** Wire types of the controller's REST API (field names as the API sends them). */
export type BranchMode = 'full' | 'diff' | 'live';

export interface SnapshotInfo {
  tag: string;
  dir: string;
  created_at_unix: number;
  status: 'writing' | 'ready' | 'failed';
  bootable: boolean;
  branched_from?: string;
  mode?: string;
  pause_ms?: number;
  diff_ms?: number;
  diff_physical_bytes?: number;
  warning?: string;
  parent_tag?: string;
  chain_depth?: number;
  accelerator?: string;
  memory_kind?: 'full' | 'diff';
  net?: 'none' | 'virtio';
}

export interface SnapshotDetail {
  tag: string;
  dir: string;
  created_at_unix: number;
  accelerator: string;
  memory_kind: 'full' | 'diff';
  memory_logical_bytes: number;
  memory_physical_bytes: number;
  vmstate_bytes: number;
  disk_bytes: number;
  on_disk_bytes: number;
  parent_tag: string | null;
  parent_content_hash: string | null;
  chain_depth: number;
  ancestors: string[];
  dependents: string[];
}

export interface SpawnTimings {
  spawn_ms: number;
  load_ms: number;
  cont_ms: number;
  agent_ms: number;
  identity_ms: number;
  ready_ms: number;
  from_pool: boolean;
}

export interface SandboxInfo {
  id: string;
  snapshot_tag: string;
  status: 'running' | 'exited';
  exit_reason?: string;
  netns: string | null;
  guest_addr: string | null;
  created_at_unix: number;
  pid: number | null;
  memory_limit_mib: number | null;
  has_branched: boolean;
  last_branch_memory_path: string | null;
  branch_count: number;
  timeout_secs: number | null;
  expires_at_unix: number | null;
  metadata: Record<string, string>;
  workspace: string | null;
}

export interface SpawnResult extends Partial<SandboxInfo> {
  ok: boolean;
  error?: string;
  timings?: SpawnTimings;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exit_code: number | null;
  signal: string | null;
  timed_out: boolean;
  duration_ms: number;
  error: string | null;
}

export type ExecEvent =
  | { type: 'start'; pid: number }
  | { type: 'stdout' | 'stderr'; data: string }
  | { type: 'exit'; exit_code: number | null; signal: string | null; timed_out: boolean; duration_ms: number }
  | { type: 'error'; error: string };

export interface EvalResult {
  ok: boolean;
  result: string | null;
  result_json?: unknown;
  stdout: string;
  stderr: string;
  error: string | null;
  error_type: string | null;
  traceback: string | null;
  exit_code: number;
  duration_ms: number;
}

export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime_ms: number;
}

export interface WorkspaceInfo {
  id: string;
  name: string;
  source_snapshot_tag: string;
  current_state_tag: string | null;
  status: 'running' | 'suspended' | 'stale';
  live_sandbox_id: string | null;
  created_at_unix: number;
  last_active_unix: number;
  last_branch_memory_path: string | null;
  per_child_netns: boolean;
  memory_limit_mib: number | null;
}
