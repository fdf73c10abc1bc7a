/**
 * E2B's sandbox metrics (`getMetrics`): samples every 5 s of CPU (the VM's QEMU process, as a share of
 * its vCPUs), guest memory (/proc/meminfo) and root disk (df), taken from a sandbox's first metrics
 * request on and for as long as someone keeps asking (10 minutes after the last request, it stops:
 * under TCG every guest-side reading costs the guest some CPU).
 */
import fs from 'node:fs';
import type { Controller } from '../controller.js';
import type { LiveSandbox } from '../sandboxes.js';
import { machineOfTag } from './view.js';

export interface SandboxMetric {
  timestamp: string;
  timestampUnix: number;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
}

const INTERVAL_MS = 5000;
const KEEP = 720; // an hour of samples
const IDLE_STOP_MS = 10 * 60_000;
/** Linux's USER_HZ: /proc/<pid>/stat counts CPU time in these. */
const CLOCK_TICKS = 100;

/** utime + stime of a process in seconds, or undefined once it is gone. */
export function processCpuSeconds(pid: number, procRoot = '/proc'): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`${procRoot}/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) / CLOCK_TICKS : undefined;
}

/** Guest memory and disk from one command's output: /proc/meminfo, then `df -B1 --output=used,size /`. */
export function parseGuestUsage(text: string): {
  memTotal: number;
  memUsed: number;
  memCache: number;
  diskUsed: number;
  diskTotal: number;
} {
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  const total = kib('MemTotal');
  const cache = kib('Cached') + kib('Buffers');
  const used = Math.max(0, total - kib('MemFree') - cache);
  const df = /^\s*(\d+)\s+(\d+)\s*$/m.exec(text.slice(text.lastIndexOf('Used')));
  return {
    memTotal: total,
    memUsed: used,
    memCache: cache,
    diskUsed: Number(df?.[1] ?? 0),
    diskTotal: Number(df?.[2] ?? 0),
  };
}

interface Sampler {
  samples: SandboxMetric[];
  timer: NodeJS.Timeout;
  lastAsked: number;
  lastCpu: { at: number; secs: number } | undefined;
  busy: boolean;
}

export class MetricsSampler {
  private readonly samplers = new Map<string, Sampler>();

  constructor(private readonly ctl: Controller) {}

  /** The samples in [startS, endS] (unix seconds), starting the sampler on first use. */
  async query(live: LiveSandbox, startS?: number, endS?: number): Promise<SandboxMetric[]> {
    let s = this.samplers.get(live.rec.id);
    if (!s) {
      s = {
        samples: [],
        timer: setInterval(() => void this.sample(live), INTERVAL_MS),
        lastAsked: 0,
        lastCpu: undefined,
        busy: false,
      };
      s.timer.unref();
      this.samplers.set(live.rec.id, s);
      await this.sample(live); // a first reading now, so the first answer is not empty
    }
    s.lastAsked = Date.now();
    return s.samples.filter(
      (m) =>
        (startS === undefined || m.timestampUnix >= startS) &&
        (endS === undefined || m.timestampUnix <= endS),
    );
  }

  private stop(id: string): void {
    const s = this.samplers.get(id);
    if (s) clearInterval(s.timer);
    this.samplers.delete(id);
  }

  close(): void {
    for (const id of [...this.samplers.keys()]) this.stop(id);
  }

  private async sample(live: LiveSandbox): Promise<void> {
    const s = this.samplers.get(live.rec.id);
    if (!s) return;
    if (!this.ctl.sandboxes.live.has(live.rec.id) || (s.lastAsked && Date.now() - s.lastAsked > IDLE_STOP_MS))
      return this.stop(live.rec.id);
    if (s.busy || live.rec.paused_at_unix !== null) return;
    s.busy = true;
    try {
      const now = Date.now();
      const secs = processCpuSeconds(live.vm.pid);
      const vcpus = machineOfTag(live.rec.snapshot_tag).cpuCount;
      let pct = 0;
      if (secs !== undefined && s.lastCpu)
        pct = Math.min(
          100,
          Math.max(0, ((secs - s.lastCpu.secs) / ((now - s.lastCpu.at) / 1000) / vcpus) * 100),
        );
      if (secs !== undefined) s.lastCpu = { at: now, secs };
      const agent = await live.guest.agent();
      const r = await agent.exec({
        argv: ['/bin/sh', '-c', 'cat /proc/meminfo; df -B1 --output=used,size /'],
        timeout_ms: 10_000,
      });
      const u = parseGuestUsage(r.stdout);
      s.samples.push({
        timestamp: new Date(now).toISOString(),
        timestampUnix: Math.floor(now / 1000),
        cpuCount: vcpus,
        cpuUsedPct: Math.round(pct * 100) / 100,
        ...u,
      });
      if (s.samples.length > KEEP) s.samples.splice(0, s.samples.length - KEEP);
    } catch {
      /* the guest did not answer this time: no sample */
    } finally {
      s.busy = false;
    }
  }
}
