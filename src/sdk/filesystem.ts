import { Readable } from 'node:stream';
import type { Controller, RequestBody } from './controller.js';
import { NotFoundError } from './errors.js';
import type { FileEntry } from './types.js';

export type ReadFormat = 'text' | 'bytes' | 'stream';

/** `sandbox.files`: streamed through the controller to the guest agent. */
export class Filesystem {
  constructor(
    private readonly controller: Controller,
    private readonly sandboxId: string,
  ) {}

  read(path: string, opts?: { format?: 'text' }): Promise<string>;
  read(path: string, opts: { format: 'bytes' }): Promise<Uint8Array>;
  read(path: string, opts: { format: 'stream' }): Promise<ReadableStream<Uint8Array>>;
  async read(
    path: string,
    opts: { format?: ReadFormat } = {},
  ): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    const res = await this.controller.readFile(this.sandboxId, path);
    if (opts.format === 'stream') return res.body!;
    if (opts.format === 'bytes') return new Uint8Array(await res.arrayBuffer());
    return res.text();
  }

  /** Write a file (parent dirs are created). Accepts strings, bytes, or a stream for large files. */
  async write(
    path: string,
    data: string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array> | Readable,
    opts: { mode?: number } = {},
  ): Promise<FileEntry> {
    const body = data instanceof Readable ? (Readable.toWeb(data) as ReadableStream<Uint8Array>) : data;
    return this.controller.writeFile(this.sandboxId, path, body as RequestBody, opts.mode);
  }

  async list(path: string, opts: { depth?: number } = {}): Promise<FileEntry[]> {
    return (await this.controller.listFiles(this.sandboxId, path, opts.depth ?? 1)).entries;
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.controller.statFile(this.sandboxId, path);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  getInfo(path: string): Promise<FileEntry> {
    return this.controller.statFile(this.sandboxId, path);
  }

  async remove(path: string, opts: { recursive?: boolean } = { recursive: true }): Promise<void> {
    await this.controller.removeFile(this.sandboxId, path, opts.recursive ?? true);
  }

  /** Create a directory (and parents). Returns false when it already existed, as E2B does. */
  async makeDir(path: string): Promise<boolean> {
    const existed = await this.exists(path);
    await this.controller.makeDir(this.sandboxId, path);
    return !existed;
  }
}
