import { Controller, type ControllerOptions, type NetworkPolicy } from './controller.js';
import { Commands } from './commands.js';
import { Filesystem } from './filesystem.js';
import { SandboxError } from './errors.js';
import type { BranchMode, SandboxInfo, SnapshotInfo } from './types.js';

export interface SandboxOpts extends ControllerOptions {
  /** the snapshot tag to fork from (E2B: template) */
  template?: string;
  snapshotTag?: string;
  /** lifetime; the controller kills the sandbox after it (default 300 000 ms, as E2B) */
  timeoutMs?: number;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  perChildNetns?: boolean;
  /** egress policy (E2B: network {allowOut, denyOut} and allowInternetAccess); implies a network */
  network?: NetworkPolicy;
  memoryLimitMib?: number;
}

export interface ExecutionError {
  name: string;
  value: string;
  traceback: string;
}

/** Result of `runCode` (shaped like E2B code-interpreter's Execution). */
export interface Execution {
  text: string | undefined;
  results: Array<{ text: string | undefined; json?: unknown; isMainResult: boolean }>;
  logs: { stdout: string[]; stderr: string[] };
  error: ExecutionError | undefined;
}

const DEFAULT_TIMEOUT_MS = 300_000;

/**
 * A sandbox, E2B-shaped: `Sandbox.create()`, `sandbox.commands.run()`, `sandbox.files.*`,
 * `sandbox.runCode()`; plus what forkd adds: `branch()` and `Sandbox.fork(n)` from a warm snapshot.
 */
export class Sandbox {
  readonly commands: Commands;
  readonly files: Filesystem;

  constructor(
    readonly controller: Controller,
    readonly info: SandboxInfo,
  ) {
    this.commands = new Commands(controller, info.id);
    this.files = new Filesystem(controller, info.id);
  }

  get sandboxId(): string {
    return this.info.id;
  }

  private static spawnOpts(opts: SandboxOpts): { controller: Controller; tag: string } {
    const tag = opts.snapshotTag ?? opts.template;
    if (!tag) throw new TypeError('Sandbox.create needs a snapshot: pass { template } or { snapshotTag }');
    return { controller: new Controller(opts), tag };
  }

  static async create(opts: SandboxOpts): Promise<Sandbox> {
    const [sb] = await Sandbox.fork(1, opts);
    if (sb instanceof Error) throw sb;
    return sb!;
  }

  /**
   * Fork `n` sandboxes from one snapshot in one call. Like E2B's fork, the result is allSettled-style:
   * each element is a Sandbox or the Error that child hit.
   */
  static async fork(n: number, opts: SandboxOpts): Promise<Array<Sandbox | Error>> {
    const { controller, tag } = Sandbox.spawnOpts(opts);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const res = await controller.spawnSandboxes({
      snapshotTag: tag,
      n,
      ...(timeoutMs > 0 ? { timeout: Math.ceil(timeoutMs / 1000) } : {}),
      ...(opts.envs ? { envs: opts.envs } : {}),
      ...(opts.metadata ? { metadata: opts.metadata } : {}),
      ...(opts.perChildNetns ? { perChildNetns: true } : {}),
      ...(opts.network ? { network: opts.network } : {}),
      ...(opts.memoryLimitMib ? { memoryLimitMib: opts.memoryLimitMib } : {}),
    });
    return res.map((r) =>
      r.ok
        ? new Sandbox(controller, r as SandboxInfo)
        : new SandboxError(500, r, controller.baseUrl, r.error),
    );
  }

  /** Reattach to a running sandbox by id. */
  static async connect(sandboxId: string, opts: ControllerOptions = {}): Promise<Sandbox> {
    const c = new Controller(opts);
    return new Sandbox(c, await c.getSandbox(sandboxId));
  }

  static async list(opts: ControllerOptions = {}): Promise<SandboxInfo[]> {
    return new Controller(opts).listSandboxes();
  }

  /** Run code in the sandbox's warm interpreter (state persists across calls in a context). */
  async runCode(
    code: string,
    opts: { language?: 'python' | 'js' | 'javascript'; context?: string; timeoutMs?: number } = {},
  ): Promise<Execution> {
    const language = opts.language === 'javascript' ? 'js' : (opts.language ?? 'python');
    const r = await this.controller.evalCode(this.sandboxId, code, {
      language,
      ...(opts.context ? { context: opts.context } : {}),
      timeoutSecs: (opts.timeoutMs ?? 60_000) / 1000,
    });
    const text = r.result ?? undefined;
    return {
      text,
      results:
        r.result === null
          ? []
          : [{ text, ...(r.result_json !== undefined ? { json: r.result_json } : {}), isMainResult: true }],
      logs: { stdout: r.stdout ? [r.stdout] : [], stderr: r.stderr ? [r.stderr] : [] },
      error: r.error
        ? { name: r.error_type ?? 'Error', value: r.error, traceback: r.traceback ?? '' }
        : undefined,
    };
  }

  /** Snapshot this running sandbox into a new tag that children can be forked from. */
  branch(opts: { tag?: string; mode?: BranchMode; wait?: boolean } = {}): Promise<SnapshotInfo> {
    return this.controller.branchSandbox(this.sandboxId, opts);
  }

  /** Replace the sandbox's egress policy, atomically, while it runs. */
  async updateNetwork(policy: NetworkPolicy): Promise<void> {
    await this.controller.updateNetwork(this.sandboxId, policy);
  }

  async setTimeout(timeoutMs: number): Promise<void> {
    await this.controller.setSandboxTimeout(this.sandboxId, Math.ceil(timeoutMs / 1000));
  }

  async isRunning(): Promise<boolean> {
    try {
      return (await this.controller.getSandbox(this.sandboxId)).status === 'running';
    } catch {
      return false;
    }
  }

  getInfo(): Promise<SandboxInfo> {
    return this.controller.getSandbox(this.sandboxId);
  }

  /** Kill the sandbox. Idempotent: returns false if it was already gone. */
  async kill(): Promise<boolean> {
    try {
      await this.controller.killSandbox(this.sandboxId);
      return true;
    } catch (e) {
      if ((e as { status?: number }).status === 404) return false;
      throw e;
    }
  }
}
