import { randomBytes } from 'node:crypto';
import type { Identity } from '../protocol/agent-api.js';

/** What a freshly restored child is told: its id as hostname, the host's clock, fresh entropy. */
export function identityFor(sandboxId: string): Identity {
  return {
    sandbox_id: sandboxId,
    hostname: sandboxId,
    time_unix_ns: String(BigInt(Date.now()) * 1_000_000n),
    seed_hex: randomBytes(64).toString('hex'),
  };
}
