import fs from 'node:fs';
import path from 'node:path';

export interface AuditEntry {
  ts: string;
  method: string;
  path: string;
  status: number;
  latency_us: number;
  remote: string;
  ua: string | null;
  request_id: string;
}

/** Append-only audit log: one JSON line per request (bodies and tokens are never written). */
export class AuditLog {
  private readonly stream: fs.WriteStream;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    this.stream = fs.createWriteStream(file, { flags: 'a', mode: 0o600 });
    this.stream.on('error', () => {});
  }

  write(e: AuditEntry): void {
    this.stream.write(JSON.stringify(e) + '\n');
  }

  /** A change recorded with its details (e.g. an egress policy replaced): `event` names it. */
  event(e: { event: string } & Record<string, unknown>): void {
    this.stream.write(JSON.stringify({ ts: new Date().toISOString(), ...e }) + '\n');
  }

  close(): Promise<void> {
    return new Promise((r) => this.stream.end(r));
  }
}
