export class AgentError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** errno-style code from the guest (ENOENT, EISDIR, ...) where there is one */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}

/**
 * Bounds on what a guest may send in one reply. Whatever runs in the guest can answer in the agent's
 * place, so every size is capped: a reply past its cap fails that request with a named error (and the
 * session is dropped), never the host process.
 */
export const AGENT_LIMITS = {
  /** A JSON reply (eval results carry the code's stdout/stderr). */
  replyBytes: 64 << 20,
  /** One NDJSON line of an exec stream (the agent sends output in ≤64 KiB chunks). */
  execLineBytes: 8 << 20,
  /** stdout or stderr collected into an ExecResult; streamed events beyond it still reach onEvent. */
  execOutputChars: 64 << 20,
  /** An error message echoed from the guest. */
  errorChars: 4096,
  /** Liveness pings while requests are in flight; generous, for a loaded TCG host. */
  pingIntervalMs: 10_000,
  pingTimeoutMs: 20_000,
};
