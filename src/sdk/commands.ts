import type { Controller } from './controller.js';
import { CommandExitError } from './errors.js';

export interface CommandResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  error?: string | undefined;
}

export interface CommandStartOpts {
  background?: boolean;
  cwd?: string;
  envs?: Record<string, string>;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** kill the command (its whole process group) after this long; 0 = no limit. Default 60 s. */
  timeoutMs?: number;
  stdin?: string;
}

/** A running command (`commands.run(cmd, {background: true})`). */
export class CommandHandle {
  pid: number | undefined;
  stdout = '';
  stderr = '';
  exitCode: number | null | undefined;
  error: string | undefined;
  private readonly done: Promise<CommandResult>;
  private readonly ac = new AbortController();

  constructor(controller: Controller, sandboxId: string, cmd: string, opts: CommandStartOpts) {
    this.done = (async () => {
      try {
        for await (const ev of controller.execStream(sandboxId, cmd, {
          timeoutSecs: (opts.timeoutMs ?? 60_000) / 1000,
          ...(opts.envs ? { env: opts.envs } : {}),
          ...(opts.cwd ? { cwd: opts.cwd } : {}),
          ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
          signal: this.ac.signal,
        })) {
          if (ev.type === 'start') this.pid = ev.pid;
          else if (ev.type === 'stdout') {
            this.stdout += ev.data;
            opts.onStdout?.(ev.data);
          } else if (ev.type === 'stderr') {
            this.stderr += ev.data;
            opts.onStderr?.(ev.data);
          } else if (ev.type === 'error') this.error = ev.error;
          else if (ev.type === 'exit') {
            this.exitCode = ev.exit_code;
            if (ev.timed_out) this.error = `timed out after ${opts.timeoutMs ?? 60_000} ms`;
            else if (ev.signal) this.error = `killed by ${ev.signal}`;
          }
        }
      } catch (e) {
        if (!this.ac.signal.aborted) throw e;
        this.error = 'disconnected';
      }
      return { exitCode: this.exitCode ?? null, stdout: this.stdout, stderr: this.stderr, error: this.error };
    })();
    this.done.catch(() => {});
  }

  /** Wait for the command; throws CommandExitError when it did not exit 0 (E2B semantics). */
  async wait(): Promise<CommandResult> {
    const r = await this.done;
    if (r.exitCode !== 0) throw new CommandExitError(r);
    return r;
  }

  /** Stop following the output; closing the stream ends the command in the guest. */
  kill(): boolean {
    this.ac.abort();
    return true;
  }
}

/** `sandbox.commands` */
export class Commands {
  constructor(
    private readonly controller: Controller,
    private readonly sandboxId: string,
  ) {}

  run(cmd: string, opts: CommandStartOpts & { background: true }): Promise<CommandHandle>;
  run(cmd: string, opts?: CommandStartOpts & { background?: false }): Promise<CommandResult>;
  async run(cmd: string, opts: CommandStartOpts = {}): Promise<CommandResult | CommandHandle> {
    const h = new CommandHandle(this.controller, this.sandboxId, cmd, opts);
    if (opts.background) return h;
    return h.wait();
  }
}
