import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { runOk } from '../../src/util/proc.js';
import { ForkdError } from '../../src/util/errors.js';

describe('host commands', () => {
  it('a failing host program is a ForkdError naming the command and its output, not an internal error', async () => {
    await assert.rejects(
      runOk('sh', ['-c', 'echo "no such device" >&2; exit 3']),
      (e: unknown) =>
        e instanceof ForkdError &&
        e.code === 'host_command' &&
        /^sh -c .* failed \(exit 3\):\nno such device$/.test(e.message) &&
        /forkd doctor/.test(e.hint ?? ''),
    );
    assert.equal((await runOk('sh', ['-c', 'echo ok'])).stdout, 'ok\n');
  });

  it('a missing program names the fix', async () => {
    await assert.rejects(
      runOk('forkd-no-such-tool', []),
      (e: unknown) => e instanceof ForkdError && /not installed/.test(e.message),
    );
  });
});
