/**
 * Wire types of the controller's REST API (field names as the API sends them). They are the server's
 * own types, imported type-only, so the SDK and the daemon cannot drift apart and the SDK pulls in no
 * server code at run time.
 */
export type {
  SnapshotInfo,
  SandboxInfo,
  SpawnItem as SpawnResult,
  WorkspaceInfo,
} from '../controller/controller.js';
export type { SpawnTimings } from '../controller/sandboxes.js';
export type { SnapshotDetail } from '../snapshot/lineage.js';
export type { ExecEvent, FileEntry } from '../protocol/agent-api.js';
import type { ExecResult as AgentExecResult } from '../protocol/agent-api.js';

export type BranchMode = 'full' | 'diff' | 'live';

/** exec through the daemon: the agent's result plus its error (failed spawn, timeout) as text. */
export type ExecResult = AgentExecResult & { error: string | null };

/** eval through the daemon: the agent's answer with its error flattened to text + traceback. */
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
