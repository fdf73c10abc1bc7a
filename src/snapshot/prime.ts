import { Readable } from 'node:stream';
import { AgentClient } from '../agent-client/client.js';
import { PythonPort } from '../agent-client/python-port.js';
import { sleep } from '../util/proc.js';

/**
 * Run, in the parent and just before its snapshot, every request a child makes on its way to a first
 * answer (resync, identity, eval, exec, files), each a few times over fresh connections; then settle
 * the guest.
 *
 * Why: a child starts from the parent's memory, so work the parent already did is never redone, but
 * work it never did is redone by every child. Under TCG that work is expensive twice over: the guest's
 * JavaScript engine compiles each function (and regular expression) on its first call, and each child's
 * QEMU must translate all guest code it runs for the first time. Priming moves the compiling into the
 * parent, once. Settling collects the garbage all this made (so no child starts with a collection due)
 * and freezes the Python heap.
 */
export async function primeAgent(
  socketPath: string,
  timeoutMs: number,
  pythonSocket?: string | undefined,
): Promise<void> {
  const rounds = 3;
  for (let i = 0; i < rounds; i++) {
    if (pythonSocket) {
      // A child's first answer: identity and eval on the Python worker's own port.
      const py = await PythonPort.connect(pythonSocket, { timeoutMs });
      try {
        await py.announce('forkd-parent');
        await py.eval({ code: '1' });
        await py.ping();
      } finally {
        py.close();
      }
    }
    const agent = await AgentClient.connect(socketPath, { timeoutMs });
    try {
      const ping = await agent.ping();
      // The parent's own identity: its name stays what the guest's init gave it.
      await agent.announce('forkd-parent');
      if (ping.python.ready) await agent.eval({ code: '1' });
      await agent.eval({ code: '1', language: 'js' });
      // A shell builtin: an image may have no /bin/true (distroless), the shell is always there.
      await agent.exec({ cmd: 'true' });
      const probe = '/tmp/.forkd-prime';
      await agent.writeFile(probe, Readable.from([Buffer.from('forkd')]));
      await agent.statFile(probe);
      await agent.listFiles('/tmp');
      const { stream } = await agent.readFile(probe);
      for await (const chunk of stream) void chunk;
      await agent.removeFile(probe);
    } finally {
      agent.close();
    }
  }
  const agent = await AgentClient.connect(socketPath, { timeoutMs });
  try {
    await agent.settle();
  } finally {
    agent.close();
  }
  // Let the guest finish what closing the session started (stream teardown, timers) while it is still
  // the parent.
  await sleep(1500);
}
