import client from 'prom-client';
import { forkdVersion } from '../util/project.js';

/** Prometheus metrics: gauges sampled at scrape time, histograms observed as work happens. */
export class Metrics {
  readonly registry = new client.Registry();
  readonly spawn = new client.Histogram({
    name: 'forkd_spawn_seconds',
    help: 'Time from spawn request to a sandbox answering its identity call, per sandbox',
    labelNames: ['from_pool'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly exec = new client.Histogram({
    name: 'forkd_exec_seconds',
    help: 'exec round trip through the guest agent',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300],
    registers: [this.registry],
  });
  readonly evalh = new client.Histogram({
    name: 'forkd_eval_seconds',
    help: 'eval round trip through the guest agent',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30],
    registers: [this.registry],
  });
  readonly branchPause = new client.Histogram({
    name: 'forkd_branch_pause_seconds',
    help: 'How long the source sandbox was paused by a branch',
    labelNames: ['mode'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly branch = new client.Histogram({
    name: 'forkd_branch_seconds',
    help: 'Branch request to snapshot ready (or failed)',
    labelNames: ['mode', 'result'],
    buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [this.registry],
  });
  readonly http = new client.Histogram({
    name: 'forkd_http_request_duration_seconds',
    help: 'REST request latency',
    labelNames: ['method', 'route', 'status'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    registers: [this.registry],
  });

  /** Each gauge reads only its own source at scrape time (the snapshot count walks the disk). */
  constructor(sample: {
    snapshots: () => number;
    sandboxes: () => number;
    branches: () => number;
    cap: () => number;
    pool: () => Record<string, number>;
    workspaces: () => number;
    /** Per sandbox with a network namespace: packets its egress policy refused (read from nftables). */
    egressRefused: () => Promise<Record<string, number>>;
  }) {
    const reg = [this.registry];
    const g = (name: string, help: string, read: () => number) =>
      new client.Gauge({
        name,
        help,
        registers: reg,
        collect() {
          this.set(read());
        },
      });
    g('forkd_snapshots_total', 'Snapshots on disk (ready or broken)', sample.snapshots);
    g('forkd_sandboxes_active', 'Running sandboxes', sample.sandboxes);
    g('forkd_branches_in_flight', 'Branches being written', sample.branches);
    g('forkd_branch_concurrency_cap', 'Branches allowed at once', sample.cap);
    g('forkd_workspaces_total', 'Workspaces', sample.workspaces);
    new client.Gauge({
      name: 'forkd_pool_ready',
      help: 'Prepared children waiting in the warm pool, per snapshot tag',
      labelNames: ['tag'],
      registers: reg,
      collect() {
        this.reset();
        for (const [tag, n] of Object.entries(sample.pool())) this.set({ tag }, n);
      },
    });
    new client.Counter({
      name: 'forkd_egress_refused_packets_total',
      help: 'Packets from a sandbox its egress policy refused (a refused TCP connect is one), plus connections its SNI/Host check closed, per sandbox',
      labelNames: ['sandbox'],
      registers: reg,
      async collect() {
        const counts = await sample.egressRefused();
        this.reset();
        for (const [sandbox, n] of Object.entries(counts)) this.inc({ sandbox }, n);
      },
    });
    new client.Gauge({
      name: 'forkd_build_info',
      help: 'forkd version',
      labelNames: ['version'],
      registers: reg,
    }).set({ version: forkdVersion() }, 1);
  }
}
