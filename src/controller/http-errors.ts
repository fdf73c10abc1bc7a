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
  internal: 500,
};

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
    const issues = err.validation.map((v) => {
      const where = v.instancePath
        ? v.instancePath.replace(/^\//, '').replaceAll('/', '.')
        : err.validationContext;
      return `${where}: ${v.message}`;
    });
    body = {
      error: `invalid request ${err.validationContext ?? ''}: ${issues.join('; ')}`.replace('  ', ' '),
      code: 'bad_input',
    };
  } else {
    const fe = err as FastifyError;
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      status = fe.statusCode;
      body = { error: fe.message, code: fe.code ?? 'bad_request' };
    } else req.log.error({ err }, 'request failed');
  }
  void reply.status(status).type('application/json').send(body);
}
