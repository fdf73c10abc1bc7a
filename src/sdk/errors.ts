/**
 * Typed errors of the SDK. Every failed controller call throws a ControllerError (HTTP status, the
 * controller's `error`/`code`/`hint`, URL); the common statuses get their own subclass so callers can
 * `catch (e) { if (e instanceof NotFoundError) ... }` as with E2B's SDK.
 */
export class ControllerError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly url: string,
    message?: string,
  ) {
    super(message ?? `controller ${url}: HTTP ${status}: ${errorText(body)}`);
    this.name = 'ControllerError';
  }
  /** The controller's machine-readable error code (bad_input, not_found, conflict, ...). */
  get code(): string | undefined {
    return (this.body as { code?: string } | null)?.code;
  }
  get hint(): string | undefined {
    return (this.body as { hint?: string } | null)?.hint;
  }
}

export class InvalidArgumentError extends ControllerError {
  override name = 'InvalidArgumentError';
}
export class AuthenticationError extends ControllerError {
  override name = 'AuthenticationError';
}
export class NotFoundError extends ControllerError {
  override name = 'NotFoundError';
}
export class ConflictError extends ControllerError {
  override name = 'ConflictError';
}
export class CapacityError extends ControllerError {
  override name = 'CapacityError';
}
export class SandboxError extends ControllerError {
  override name = 'SandboxError';
}

/** Thrown when a request did not complete in time (client-side timeout or the controller's 504). */
export class TimeoutError extends Error {
  override name = 'TimeoutError';
}

/** `commands.run` of a command that exited non-zero (E2B semantics); carries the full result. */
export class CommandExitError extends Error {
  override name = 'CommandExitError';
  constructor(
    readonly result: { exitCode: number | null; stdout: string; stderr: string; error?: string | undefined },
  ) {
    super(
      `command exited with ${result.exitCode ?? 'a signal'}${result.stderr ? `: ${result.stderr.trim().slice(-500)}` : ''}`,
    );
  }
  get exitCode(): number | null {
    return this.result.exitCode;
  }
  get stdout(): string {
    return this.result.stdout;
  }
  get stderr(): string {
    return this.result.stderr;
  }
}

function errorText(body: unknown): string {
  if (body && typeof body === 'object' && 'error' in body) return String((body as { error: unknown }).error);
  return typeof body === 'string' ? body : JSON.stringify(body);
}

export function errorFor(status: number, body: unknown, url: string): ControllerError {
  const C =
    status === 400 || status === 415 || status === 422
      ? InvalidArgumentError
      : status === 401 || status === 403
        ? AuthenticationError
        : status === 404
          ? NotFoundError
          : status === 409
            ? ConflictError
            : status === 503 || status === 507
              ? CapacityError
              : SandboxError;
  return new C(status, body, url);
}
