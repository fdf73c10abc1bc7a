/**
 * ForkdError: an error a user can act on. `message` names the problem, `hint` the fix.
 * `code` is a stable machine-readable identifier (used by --json output and, later, HTTP status mapping).
 */
export type ErrorCode =
  | 'bad_input'
  | 'not_found'
  | 'exists'
  /** the request conflicts with the current state (busy sandbox, snapshot still writing, dependents) */
  | 'conflict'
  /** a capacity limit was hit; retry later */
  | 'busy'
  | 'host_unsupported'
  | 'out_of_space'
  | 'incompatible_snapshot'
  | 'corrupt_snapshot'
  /** a snapshot pack that is malformed, tampered with, or hostile */
  | 'bad_pack'
  /** a pack whose signature is missing, invalid or from a key that is not trusted */
  | 'untrusted'
  /** a remote store (hub, presigned URL) failed or refused */
  | 'remote_failed'
  | 'vmm_failed'
  | 'agent_failed'
  | 'timeout'
  | 'interrupted'
  /** a host program forkd runs (ip, qemu-img, iptables, ...) failed; the message names it */
  | 'host_command'
  | 'internal';

export class ForkdError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  constructor(code: ErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ForkdError';
    this.code = code;
    this.hint = hint;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
