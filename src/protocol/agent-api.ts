/**
 * Request/response shapes of the guest agent's HTTP/2 API (shared by host client and guest server).
 * Routes:
 *   GET  /v1/ping                -> PingResponse
 *   POST /v1/identity  Identity  -> IdentityResult   (after every restore: who the child is now)
 *   POST /v1/settle              -> SettleResult     (the parent, just before its snapshot)
 *   POST /v1/exec      ExecRequest -> NDJSON stream of ExecEvent lines
 *   POST /v1/eval      EvalRequest -> EvalResult
 *   GET  /v1/files?path=P            -> file bytes (streamed)
 *   PUT  /v1/files?path=P[&mode=OCT][&user=U] <- file bytes (streamed) -> FileEntry (owned by U)
 *   GET  /v1/files/list?path=P[&depth=N] -> { entries: FileEntry[] }
 *   GET  /v1/files/stat?path=P       -> FileEntry
 *   POST /v1/files/remove { path, recursive? } -> { removed }
 *   POST /v1/files/mkdir  { path, user? } -> FileEntry (+ created)
 *   POST /v1/files/move   { source, destination, user? } -> FileEntry of the destination
 *   POST /v1/procs    ProcStartRequest -> NDJSON stream of ProcEvent lines (the process outlives it)
 *   POST /v1/procs/attach { pid | tag } -> NDJSON stream: start, then output from now on, then end
 *   GET  /v1/procs                   -> { processes: ProcInfo[] }
 *   POST /v1/procs/input  { pid | tag, data (base64) } -> {}
 *   POST /v1/procs/close-stdin { pid | tag } -> {}
 *   POST /v1/tcp?port=N              <-> raw bytes of a TCP connection to 127.0.0.1:N in the guest
 *   POST /v1/watch { path, recursive? } -> NDJSON stream of WatchEvent lines until closed
 *   POST /v1/procs/resize { pid | tag, cols, rows } -> {}  (a process started with a pty)
 *   POST /v1/procs/signal { pid | tag, signal: "SIGKILL" | "SIGTERM" | ... } -> {}
 */
/**
 * Where forkd puts the agent's own runtime in an image guest's root (image/agent-runtime.ts), and the
 * image's run defaults (Env, WorkingDir, User) beside it, which the agent reads at start.
 */
export const GUEST_RUNTIME_DIR = '/opt/forkd-runtime';
export const GUEST_IMAGE_CONFIG = `${GUEST_RUNTIME_DIR}/image.json`;

export const AGENT_API_VERSION = 1;

export interface PingResponse {
  ok: true;
  agent_version: number;
  pid: number;
  uptime_s: number;
  hostname: string;
  sandbox_id: string | null;
  node_version: string;
  python: { ready: boolean; version?: string; numpy?: string | null; error?: string };
  /** Resync epochs seen: how many host connections this agent has served. */
  epoch: number;
}

export interface Identity {
  sandbox_id: string;
  hostname: string;
  /** Host wall clock at send time, nanoseconds since the epoch, as a decimal string. */
  time_unix_ns: string;
  /** 64 bytes of host entropy (hex) mixed into the guest kernel RNG and used to reseed user-space RNGs. */
  seed_hex: string;
}

export interface IdentityResult {
  hostname: string;
  clock_set: boolean;
  /** Guest clock minus host clock after setting it, ms (tells how stale the restored clock was before). */
  clock_skew_before_ms: number;
  kernel_rng_reseeded: boolean;
  python_reseeded: boolean;
  took_ms: number;
}

export interface SettleResult {
  /** Whether the JavaScript heap was collected (the agent runs with --expose-gc). */
  js_gc: boolean;
  heap_used: number;
  /** The Python worker's collection and freeze, or null without Python. */
  python: { collected: number; frozen: number } | null;
}

export interface ExecRequest {
  /** Program and arguments (no shell), or `cmd` for a /bin/sh -c string. Exactly one of the two. */
  argv?: string[];
  cmd?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the whole process group after this many ms. 0 or absent = no limit. */
  timeout_ms?: number;
  stdin?: string;
}

export type ExecEvent =
  | { type: 'start'; pid: number }
  | { type: 'stdout' | 'stderr'; data: string }
  | {
      type: 'exit';
      exit_code: number | null;
      signal: string | null;
      timed_out: boolean;
      duration_ms: number;
    }
  | { type: 'error'; error: string };

export interface ExecResult {
  stdout: string;
  stderr: string;
  exit_code: number | null;
  signal: string | null;
  timed_out: boolean;
  duration_ms: number;
  /** Set when stdout or stderr was longer than the host collects (the stream still carried it all). */
  truncated?: boolean;
}

/** An exec that produced nothing yet (or never ran). */
export function emptyExecResult(): ExecResult {
  return { stdout: '', stderr: '', exit_code: null, signal: null, timed_out: false, duration_ms: 0 };
}

export interface EvalRequest {
  code: string;
  language?: 'python' | 'js';
  /** Named persistent namespace; variables survive between evals in the same context. */
  context?: string;
  timeout_ms?: number;
  /** Python: also the value's MIME bundle (`formats`) and open matplotlib figures (`displays`). */
  rich?: boolean;
  /** Python: the working directory to run in, and environment variables for this evaluation only. */
  cwd?: string;
  env?: Record<string, string>;
}

export interface EvalResult {
  ok: boolean;
  /** repr() / util.inspect() of the value of the last expression, or null. */
  result: string | null;
  /** The value as JSON when it is JSON-serialisable. */
  result_json?: unknown;
  stdout: string;
  stderr: string;
  error?: { type: string; message: string; traceback: string };
  duration_ms: number;
  /** With `rich`: MIME type → data (images base64) of the last expression's value. */
  formats?: Record<string, unknown>;
  /** With `rich`: what the code displayed (matplotlib figures), each a MIME bundle. */
  displays?: Record<string, unknown>[];
}

export interface AgentErrorBody {
  error: string;
}

export interface FileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  mtime_ms: number;
  uid?: number;
  gid?: number;
  /** Names from the guest's passwd and group (the number when it has none). */
  owner?: string;
  group?: string;
  symlink_target?: string;
  /** mkdir only: false when the directory existed already. */
  created?: boolean;
}

/** A long-lived process (the guest's process table): it runs on when the stream that started it closes. */
export interface ProcStartRequest {
  /** Program and arguments (no shell). */
  argv: string[];
  env?: Record<string, string>;
  /** Default: the user's home. */
  cwd?: string;
  /** A guest account; default root. */
  user?: string;
  /** Keep stdin open for /v1/procs/input until /v1/procs/close-stdin; otherwise it is /dev/null. */
  stdin?: boolean;
  tag?: string;
  /** Run on a pseudo-terminal of this size (output comes as `pty` data; input goes to the terminal). */
  pty?: { cols: number; rows: number };
}

export interface ProcInfo {
  pid: number;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  tag?: string;
}

export type ProcEvent =
  | { type: 'start'; pid: number }
  /** Output bytes as base64 (a chunk may split a UTF-8 character). */
  | { type: 'data'; stream: 'stdout' | 'stderr' | 'pty'; data: string }
  | { type: 'end'; exit_code: number | null; signal: string | null };

/** A process by pid or by the tag it was started with. */
export type ProcSelector = { pid: number } | { tag: string };

/** A change under a watched directory; `name` is relative to it. */
export type WatchEvent =
  { type: 'start' } | { type: 'event'; name: string; op: 'create' | 'write' | 'remove' };
