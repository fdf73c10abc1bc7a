import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { ForkdError, type ErrorCode } from '../util/errors.js';
import { AgentError } from '../agent-client/client.js';

/** HTTP status for each ForkdError code. */
const STATUS: Record<ErrorCode, number> = {
  bad_input: 400,
  not_found: 404,
  exists: 409,
  conflict: 409,
  busy: 503,
  host_unsupported: 501,
  out_of_space: 507,
  incompatible_snapshot: 409,
  corrupt_snapshot: 409,
  bad_pack: 422,
  untrusted: 403,
  remote_failed: 502,
  vmm_failed: 500,
  agent_failed: 502,
  timeout: 504,
  interrupted: 503,
  host_command: 500,
  internal: 500,
};

/** The HTTP status an error leaves with (ForkdError codes, the agent's statuses, else 500). */
export function statusOf(err: unknown): number {
  if (err instanceof ForkdError) return STATUS[err.code];
  if (err instanceof AgentError) return err.status >= 400 && err.status < 500 ? err.status : 502;
  const s = (err as { statusCode?: unknown }).statusCode;
  return typeof s === 'number' && s >= 400 && s < 600 ? s : 500;
}

const MAX_ISSUES = 5;
const MAX_MESSAGE = 2000;

export interface ErrorBody {
  error: string;
  code?: string;
  hint?: string;
}

/** Every error leaves as `{"error": ...}` with a fitting status: ours, the agent's, fastify's own. */
export function errorHandler(err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply): void {
  let status = 500;
  let body: ErrorBody = { error: err.message };
  if (err instanceof ForkdError) {
    status = STATUS[err.code];
    body = { error: err.message, code: err.code, ...(err.hint ? { hint: err.hint } : {}) };
  } else if (err instanceof AgentError) {
    status = err.status >= 400 && err.status < 500 ? err.status : 502;
    body = { error: `guest agent: ${err.message}`, code: err.code ?? 'agent_error' };
  } else if (hasZodFastifySchemaValidationErrors(err)) {
    status = 400;
    // An error echoes a few issues, each short: never one line per element of a huge bad array.
    const shown = err.validation.slice(0, MAX_ISSUES).map((v) => {
      const where = v.instancePath
        ? v.instancePath.replace(/^\//, '').replaceAll('/', '.')
        : err.validationContext;
      return `${String(where).slice(0, 100)}: ${String(v.message).slice(0, 200)}`;
    });
    const more = err.validation.length - shown.length;
    body = {
      error:
        `invalid request ${err.validationContext ?? ''}: ${shown.join('; ')}${more > 0 ? ` (and ${more} more)` : ''}`.replace(
          '  ',
          ' ',
        ),
      code: 'bad_input',
    };
  } else {
    const fe = err as FastifyError;
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      status = fe.statusCode;
      body = { error: fe.message, code: fe.code ?? 'bad_request' };
    } else req.log.error({ err }, 'request failed');
  }
  if (body.error.length > MAX_MESSAGE) body.error = `${body.error.slice(0, MAX_MESSAGE)}…`;
  void reply.status(status).type('application/json').send(body);
}
