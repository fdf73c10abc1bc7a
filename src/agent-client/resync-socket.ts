import type net from 'node:net';
import { randomBytes } from 'node:crypto';
import { ForkdError } from '../util/errors.js';
import { scaledMs } from '../util/host-speed.js';
import { connectUnix } from '../util/unix-socket.js';
import { findAck, helloFrame, NONCE_BYTES } from '../protocol/resync.js';

/**
 * Send HELLO+nonce and discard input until the guest's ACK+nonce. Resolves with the socket positioned
 * at the first byte of the new session, and with the session's nonce. Resends the HELLO periodically: a
 * guest that is still booting does not read the port yet, and bytes written before it opened the port
 * may be lost.
 */
export async function resync(
  sock: net.Socket,
  deadline: number,
  signal?: AbortSignal,
  peer = 'the guest agent',
): Promise<Buffer> {
  const nonce = randomBytes(NONCE_BYTES);
  const hello = helloFrame(nonce);
  let acc = Buffer.alloc(0);
  await new Promise<void>((resolve, reject) => {
    const resend = setInterval(() => sock.write(hello), 1000);
    const timer = setInterval(() => {
      if (signal?.aborted) finish(new Error('connect aborted'));
      else if (Date.now() > deadline)
        finish(
          new Error(
            `${peer} did not answer the resync handshake (is the guest still booting, or does another client hold this VM's socket for it? QEMU serves one at a time)`,
          ),
        );
    }, 50);
    const onData = (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      const rest = findAck(acc, nonce);
      if (rest === undefined) {
        if (acc.length > 1 << 20) acc = acc.subarray(acc.length - 4096); // stale bytes from an old session
        return;
      }
      // Stop the flow before detaching: in flowing mode, bytes unshifted (or arriving) with no 'data'
      // listener are emitted to nobody and lost, and they are the start of the guest's HTTP/2 session.
      sock.pause();
      finish();
      if (rest.length) sock.unshift(rest);
    };
    const onClose = () => finish(new Error(`the socket to ${peer} closed during the resync handshake`));
    const finish = (err?: Error) => {
      clearInterval(resend);
      clearInterval(timer);
      sock.off('data', onData);
      sock.off('close', onClose);
      sock.off('error', onClose);
      if (err) reject(err);
      else resolve();
    };
    sock.on('data', onData);
    sock.on('close', onClose);
    sock.on('error', onClose);
    sock.write(hello);
  });
  sock.pause();
  return nonce;
}

/**
 * Connect to a guest port's unix socket (retrying until QEMU serves it) and resync; the socket is paused
 * at the first byte of the new session. A failed handshake is an `agent_failed` error naming `peer`.
 */
export async function connectResynced(
  socketPath: string,
  opts: { timeoutMs?: number; signal?: AbortSignal },
  peer?: string,
): Promise<{ sock: net.Socket; nonce: Buffer }> {
  const deadline = Date.now() + scaledMs(opts.timeoutMs ?? 10_000);
  const sock = await connectUnix(socketPath, {
    deadline,
    retryMs: 5,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  try {
    return { sock, nonce: await resync(sock, deadline, opts.signal, peer) };
  } catch (e) {
    sock.destroy();
    throw new ForkdError('agent_failed', (e as Error).message);
  }
}
