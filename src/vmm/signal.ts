import type net from 'node:net';
import { scaledMs } from '../util/host-speed.js';
import { connectUnix } from '../util/unix-socket.js';

/**
 * The host end of a firmware guest's signal channel (its debug-port bytes, on the machine's signal
 * socket). The socket must be connected before the guest runs: QEMU drops what a chardev server
 * writes while no client is connected.
 */
export class SignalChannel {
  private seen = Buffer.alloc(0);
  private waiters: Array<() => void> = [];

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      // Only the last few bytes matter (a signal is one byte); keep it bounded whatever the guest sends.
      this.seen = Buffer.concat([this.seen, d]).subarray(-64);
      for (const w of this.waiters.splice(0)) w();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      for (const w of this.waiters.splice(0)) w();
    });
  }

  static async connect(socketPath: string, timeoutMs = 10_000): Promise<SignalChannel> {
    const sock = await connectUnix(socketPath, { deadline: Date.now() + scaledMs(timeoutMs), retryMs: 2 });
    return new SignalChannel(sock);
  }

  /** Resolve once the guest has sent `byte` (since connect); reject after the timeout. */
  waitFor(byte: number, timeoutMs: number): Promise<void> {
    const limit = scaledMs(timeoutMs);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the guest sent no signal 0x${byte.toString(16)} within ${limit} ms`)),
        limit,
      );
      const check = () => {
        if (this.seen.includes(byte)) {
          clearTimeout(timer);
          resolve();
        } else if (this.sock.destroyed) {
          clearTimeout(timer);
          reject(new Error('the signal channel closed (QEMU exited?)'));
        } else this.waiters.push(check);
      };
      check();
    });
  }

  close(): void {
    this.sock.destroy();
  }
}
