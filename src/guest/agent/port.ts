import fs from 'node:fs';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { EventEmitter } from 'node:events';
import { HelloScanner, STARTED, ackFrame } from '../../protocol/resync.js';

/** Find the character device of the named virtio-serial port (no udev in the guest). */
export function findPortDevice(name: string, sysDir = '/sys/class/virtio-ports'): string | undefined {
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(sysDir);
  } catch {
    return undefined;
  }
  for (const e of entries) {
    try {
      if (fs.readFileSync(path.join(sysDir, e, 'name'), 'utf8').trim() === name) return path.join('/dev', e);
    } catch {
      /* port without a name */
    }
  }
  return undefined;
}

interface QueuedWrite {
  epoch: number;
  data: Buffer;
  done: (err?: Error) => void;
}

/**
 * The guest end of the agent channel. One fd for the agent's whole life (it survives host reconnects
 * and snapshot/restore). Reads and writes are blocking calls on libuv's thread pool, so a write that
 * waits for a disconnected host never blocks the event loop. Each HELLO from the host starts a new
 * epoch: a fresh Duplex is emitted as 'session' and everything queued for an older epoch is dropped.
 */
export class PortTransport extends EventEmitter {
  private epoch = 0;
  private scanner = new HelloScanner();
  private queue: QueuedWrite[] = [];
  private writing = false;
  private session: SessionStream | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private lastNonce: Buffer | undefined;
  /** SIGIOs seen; once one came, the port is armed (see armSignals) and waiting need not poll. */
  private sigio = 0;
  private onSigio: (() => void) | undefined;

  constructor(readonly fd: number) {
    super();
  }

  get currentEpoch(): number {
    return this.epoch;
  }

  /** Start reading, after telling a host that may still hold a session with a previous agent. */
  start(): void {
    // Installed before anything may arm the port: SIGIO's default action ends the process.
    process.on('SIGIO', () => {
      this.sigio++;
      this.onSigio?.();
    });
    this.enqueue(this.epoch, STARTED, () => {});
    void this.readLoop();
  }

  /**
   * Wait for a host. While none is connected the port reads as end-of-file at once, so without help
   * this is a poll every 20 ms, and under TCG each of those wake-ups in a freshly forked child runs
   * guest code its QEMU must translate first, ahead of the child's first answer. Once the port is armed
   * (O_ASYNC with this process as owner: Node cannot set that itself, the Python worker does it on the
   * fd it inherits, python.ts) the kernel signals SIGIO when a host opens the port, and this waits for
   * that, looking again every 10 s in case a signal was missed. `seen` is the count before the read
   * that found no host, so a signal that came during that read is not waited for.
   */
  private waitForHost(seen: number): Promise<void> {
    if (this.sigio === 0) return sleep(20).then(() => {});
    if (this.sigio !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.onSigio = undefined;
        resolve();
      };
      const timer = setTimeout(done, 10_000);
      this.onSigio = done;
    });
  }

  private async readLoop(): Promise<void> {
    const buf = Buffer.allocUnsafe(256 * 1024);
    for (;;) {
      let n: number;
      const seen = this.sigio;
      try {
        n = await new Promise<number>((resolve, reject) =>
          fs.read(this.fd, buf, 0, buf.length, null, (err, bytes) => (err ? reject(err) : resolve(bytes))),
        );
      } catch (e) {
        this.emit('warn', `port read: ${(e as Error).message}`);
        await sleep(100);
        continue;
      }
      if (n === 0) {
        await this.waitForHost(seen);
        continue;
      }
      this.onBytes(Buffer.from(buf.subarray(0, n)));
    }
  }

  private onBytes(chunk: Buffer): void {
    let input: Buffer | undefined = chunk;
    while (input) {
      const r = this.scanner.push(input);
      input = undefined;
      if (r.data.length) this.session?.deliver(r.data);
      if (r.hello) {
        this.newEpoch(r.hello.nonce);
        if (r.hello.rest.length) input = r.hello.rest;
      }
    }
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.scanner.holding) {
      this.flushTimer = setTimeout(() => {
        const held = this.scanner.flush();
        if (held.length) this.session?.deliver(held);
      }, 30);
    }
  }

  private newEpoch(nonce: Buffer): void {
    // The host repeats its HELLO (same nonce) until answered; a repeat is not a new connection.
    if (this.lastNonce && this.lastNonce.equals(nonce)) return;
    this.lastNonce = nonce;
    this.epoch++;
    const old = this.session;
    this.session = undefined;
    // Drop everything an older session queued; a write already inside write(2) completes and is
    // discarded by the host, which ignores all bytes before our ACK.
    for (const q of this.queue.splice(0)) q.done();
    old?.destroy();
    this.enqueue(this.epoch, ackFrame(nonce), () => {});
    this.session = new SessionStream(this, this.epoch);
    this.emit('session', this.session, this.epoch);
  }

  enqueue(epoch: number, data: Buffer, done: (err?: Error) => void): void {
    if (epoch !== this.epoch) {
      done();
      return;
    }
    this.queue.push({ epoch, data, done });
    if (!this.writing) void this.writeLoop();
  }

  private async writeLoop(): Promise<void> {
    this.writing = true;
    while (this.queue.length) {
      const item = this.queue.shift()!;
      if (item.epoch !== this.epoch) {
        item.done();
        continue;
      }
      try {
        let off = 0;
        while (off < item.data.length) {
          off += await new Promise<number>((resolve, reject) =>
            fs.write(this.fd, item.data, off, item.data.length - off, null, (err, w) =>
              err ? reject(err) : resolve(w),
            ),
          );
        }
        item.done();
      } catch (e) {
        // EAGAIN/EPIPE while the host is away: drop the session's bytes; the host resyncs on reconnect.
        item.done();
        this.emit('warn', `port write: ${(e as Error).message}`);
      }
    }
    this.writing = false;
  }
}

/** One host session: the stream the HTTP/2 server runs on. */
export class SessionStream extends Duplex {
  constructor(
    private readonly transport: PortTransport,
    readonly epoch: number,
  ) {
    super();
  }
  deliver(data: Buffer): void {
    if (!this.destroyed) this.push(data);
  }
  override _read(): void {}
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.transport.enqueue(this.epoch, chunk, () => cb());
  }
  override _final(cb: (err?: Error | null) => void): void {
    cb();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
