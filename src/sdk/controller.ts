import { errorFor, TimeoutError } from './errors.js';

/** What a request body may be (string, bytes, Blob, or a web stream for large uploads). */
export type RequestBody = NonNullable<RequestInit['body']>;
import type {
  BranchMode,
  EvalResult,
  ExecEvent,
  ExecResult,
  FileEntry,
  SandboxInfo,
  SnapshotDetail,
  SnapshotInfo,
  SpawnResult,
  WorkspaceInfo,
} from './types.js';

export interface ControllerOptions {
  /** default: $FORKD_URL, else http://127.0.0.1:8889 */
  baseUrl?: string;
  /** default: $FORKD_TOKEN */
  token?: string;
  /** per request; default 60 s (spawn, branch and snapshot creation get longer defaults) */
  timeoutMs?: number;
  fetch?: typeof fetch;
}

/** Where a sandbox may connect out to: IPv4 addresses/CIDRs with optional :PORT or :LOW-HIGH, or "all". */
export interface NetworkPolicy {
  /** always reachable (beats denyOut) */
  allowOut?: string[];
  denyOut?: string[];
  /** false: nothing but allowOut is reachable; default true */
  allowInternetAccess?: boolean;
}

function policyBody(p: NetworkPolicy): Record<string, unknown> {
  return {
    allow_out: p.allowOut ?? [],
    deny_out: p.denyOut ?? [],
    allow_internet_access: p.allowInternetAccess ?? true,
  };
}

export interface SpawnOptions {
  snapshotTag: string;
  n?: number;
  /** default: what the snapshot carries (a branch of a networked sandbox gets a namespace), else none */
  perChildNetns?: boolean;
  /** egress policy (implies a network namespace); default: the snapshot's, as its source had it */
  network?: NetworkPolicy;
  memoryLimitMib?: number;
  /** seconds until the controller kills the sandbox */
  timeout?: number;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  /** Other host files for the snapshot's volumes: "HOST:GUEST[:ro|:shared]". */
  volumes?: string[];
}

export interface ExecOptions {
  timeoutSecs?: number;
  env?: Record<string, string>;
  cwd?: string;
  stdin?: string;
}

export interface BranchOptions {
  tag?: string;
  mode?: BranchMode;
  /** false: return at once with status "writing" (202) */
  wait?: boolean;
  parentTag?: string;
}

export interface CreateSnapshotOptions {
  tag: string;
  recipe?: string;
  memSizeMib?: number;
  vcpus?: number;
  bootWaitSecs?: number;
  warmup?: string;
  warmupEval?: string;
  net?: boolean;
}

type Query = Record<string, string | number | boolean | undefined>;

/** Typed client for every route of the forkd controller's REST API. */
export class Controller {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ControllerOptions = {}) {
    this.baseUrl = (opts.baseUrl ?? process.env.FORKD_URL ?? 'http://127.0.0.1:8889').replace(/\/+$/, '');
    this.token = opts.token ?? process.env.FORKD_TOKEN ?? undefined;
    this.timeoutMs = opts.timeoutMs ?? 60_000;
    this.fetchImpl = opts.fetch ?? fetch;
  }

  private url(path: string, query?: Query): string {
    const q = query
      ? Object.entries(query)
          .filter(([, v]) => v !== undefined)
          .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
          .join('&')
      : '';
    return `${this.baseUrl}${path}${q ? `?${q}` : ''}`;
  }

  /** Low-level request: returns the Response (2xx) or throws a typed error. */
  async raw(
    method: string,
    path: string,
    opts: {
      body?: unknown;
      query?: Query;
      timeoutMs?: number;
      headers?: Record<string, string>;
      rawBody?: RequestBody;
      signal?: AbortSignal;
    } = {},
  ): Promise<Response> {
    const url = this.url(path, opts.query);
    const timeout = opts.timeoutMs ?? this.timeoutMs;
    const ac = new AbortController();
    const timer =
      timeout > 0
        ? setTimeout(
            () => ac.abort(new TimeoutError(`${method} ${path}: no answer within ${timeout} ms`)),
            timeout,
          )
        : undefined;
    opts.signal?.addEventListener('abort', () => ac.abort(opts.signal!.reason));
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let body: RequestBody | undefined = opts.rawBody;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    let res: Response;
    try {
      res = await this.fetchImpl(url, {
        method,
        headers,
        signal: ac.signal,
        ...(body !== undefined ? { body } : {}),
        ...(body instanceof ReadableStream ? { duplex: 'half' } : {}),
      } as RequestInit);
    } catch (e) {
      clearTimeout(timer);
      if (ac.signal.reason instanceof TimeoutError) throw ac.signal.reason;
      throw e;
    }
    clearTimeout(timer);
    if (!res.ok) {
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* keep text */
      }
      if (res.status === 504)
        throw new TimeoutError(`controller ${url}: ${String((parsed as { error?: string })?.error ?? text)}`);
      throw errorFor(res.status, parsed, url);
    }
    return res;
  }

  private async json<T>(
    method: string,
    path: string,
    opts: Parameters<Controller['raw']>[2] = {},
  ): Promise<T> {
    const res = await this.raw(method, path, opts);
    const text = await res.text();
    return (text ? JSON.parse(text) : null) as T;
  }

  // system
  health(): Promise<{ ok: true }> {
    return this.json('GET', '/healthz');
  }
  version(): Promise<{ version: string; api: string; vmm: string; accelerator: string | null }> {
    return this.json('GET', '/version');
  }
  async metrics(): Promise<string> {
    return (await this.raw('GET', '/metrics')).text();
  }

  // snapshots
  listSnapshots(): Promise<SnapshotInfo[]> {
    return this.json('GET', '/v1/snapshots');
  }
  createSnapshot(o: CreateSnapshotOptions): Promise<SnapshotInfo> {
    return this.json('POST', '/v1/snapshots', {
      timeoutMs: 600_000,
      body: {
        tag: o.tag,
        recipe: o.recipe,
        mem_size_mib: o.memSizeMib,
        vcpus: o.vcpus,
        boot_wait_secs: o.bootWaitSecs,
        warmup: o.warmup,
        warmup_eval: o.warmupEval,
        net: o.net,
      },
    });
  }
  async deleteSnapshot(tag: string, opts: { cascade?: boolean; force?: boolean } = {}): Promise<void> {
    await this.raw('DELETE', `/v1/snapshots/${encodeURIComponent(tag)}`, {
      query: { cascade: opts.cascade || undefined, force: opts.force || undefined },
    });
  }
  snapshotInfo(tag: string): Promise<SnapshotDetail> {
    return this.json('GET', `/v1/snapshots/${encodeURIComponent(tag)}/info`);
  }
  compactSnapshot(tag: string, to: string): Promise<SnapshotInfo> {
    return this.json('POST', `/v1/snapshots/${encodeURIComponent(tag)}/compact`, {
      body: { to },
      timeoutMs: 600_000,
    });
  }

  // sandboxes
  listSandboxes(): Promise<SandboxInfo[]> {
    return this.json('GET', '/v1/sandboxes');
  }
  /** Spawn n sandboxes; each result has its own ok/error and timings (one bad child does not fail the batch). */
  spawnSandboxes(o: SpawnOptions): Promise<SpawnResult[]> {
    return this.json('POST', '/v1/sandboxes', {
      timeoutMs: Math.max(this.timeoutMs, 120_000 + (o.n ?? 1) * 2000),
      body: {
        snapshot_tag: o.snapshotTag,
        n: o.n ?? 1,
        per_child_netns: o.perChildNetns,
        network: o.network ? policyBody(o.network) : undefined,
        memory_limit_mib: o.memoryLimitMib,
        timeout: o.timeout,
        envs: o.envs,
        metadata: o.metadata,
        volumes: o.volumes,
      },
    });
  }
  getSandbox(id: string): Promise<SandboxInfo> {
    return this.json('GET', `/v1/sandboxes/${encodeURIComponent(id)}`);
  }
  async killSandbox(id: string): Promise<void> {
    await this.raw('DELETE', `/v1/sandboxes/${encodeURIComponent(id)}`);
  }
  pingSandbox(id: string): Promise<Record<string, unknown>> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/ping`);
  }
  /** Replace a running sandbox's egress policy (atomically; fields left out take their defaults). */
  updateNetwork(id: string, policy: NetworkPolicy): Promise<SandboxInfo> {
    return this.json('PUT', `/v1/sandboxes/${encodeURIComponent(id)}/network`, { body: policyBody(policy) });
  }
  setSandboxTimeout(id: string, timeoutSecs: number | null): Promise<SandboxInfo> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/timeout`, {
      body: { timeout: timeoutSecs },
    });
  }
  /** Run argv (string[]) or a shell string; resolves with the buffered result. */
  execCommand(id: string, cmd: string[] | string, o: ExecOptions = {}): Promise<ExecResult> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/exec`, {
      timeoutMs: (o.timeoutSecs ?? 30) * 1000 + 30_000,
      body: {
        ...(Array.isArray(cmd) ? { args: cmd } : { cmd }),
        timeout_secs: o.timeoutSecs ?? 30,
        env: o.env,
        cwd: o.cwd,
        stdin: o.stdin,
      },
    });
  }
  /** Run a command and receive its output as it happens (NDJSON stream). */
  async *execStream(
    id: string,
    cmd: string[] | string,
    o: ExecOptions & { signal?: AbortSignal } = {},
  ): AsyncGenerator<ExecEvent> {
    const res = await this.raw('POST', `/v1/sandboxes/${encodeURIComponent(id)}/exec`, {
      timeoutMs: 0,
      ...(o.signal ? { signal: o.signal } : {}),
      body: {
        ...(Array.isArray(cmd) ? { args: cmd } : { cmd }),
        timeout_secs: o.timeoutSecs ?? 0,
        env: o.env,
        cwd: o.cwd,
        stdin: o.stdin,
        stream: true,
      },
    });
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line) yield JSON.parse(line) as ExecEvent;
      }
    }
  }
  evalCode(
    id: string,
    code: string,
    o: { language?: 'python' | 'js'; context?: string; timeoutSecs?: number } = {},
  ): Promise<EvalResult> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/eval`, {
      timeoutMs: (o.timeoutSecs ?? 30) * 1000 + 30_000,
      body: { code, language: o.language, context: o.context, timeout_secs: o.timeoutSecs },
    });
  }
  branchSandbox(id: string, o: BranchOptions = {}): Promise<SnapshotInfo> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/branch`, {
      timeoutMs: 600_000,
      body: { tag: o.tag, mode: o.mode, wait: o.wait, parent_tag: o.parentTag },
    });
  }

  // files
  async readFile(id: string, path: string): Promise<Response> {
    return this.raw('GET', `/v1/sandboxes/${encodeURIComponent(id)}/files`, {
      query: { path },
      timeoutMs: 0,
    });
  }
  writeFile(id: string, path: string, data: RequestBody, mode?: number): Promise<FileEntry> {
    return this.json('PUT', `/v1/sandboxes/${encodeURIComponent(id)}/files`, {
      query: { path, mode: mode === undefined ? undefined : mode.toString(8) },
      headers: { 'content-type': 'application/octet-stream' },
      rawBody: data,
      timeoutMs: 0,
    });
  }
  listFiles(id: string, path: string, depth = 1): Promise<{ entries: FileEntry[] }> {
    return this.json('GET', `/v1/sandboxes/${encodeURIComponent(id)}/files/list`, { query: { path, depth } });
  }
  statFile(id: string, path: string): Promise<FileEntry> {
    return this.json('GET', `/v1/sandboxes/${encodeURIComponent(id)}/files/stat`, { query: { path } });
  }
  removeFile(id: string, path: string, recursive = false): Promise<{ removed: string }> {
    return this.json('DELETE', `/v1/sandboxes/${encodeURIComponent(id)}/files`, {
      query: { path, recursive },
    });
  }
  makeDir(id: string, path: string): Promise<FileEntry> {
    return this.json('POST', `/v1/sandboxes/${encodeURIComponent(id)}/files/mkdir`, { body: { path } });
  }

  // workspaces
  listWorkspaces(): Promise<WorkspaceInfo[]> {
    return this.json('GET', '/v1/workspaces');
  }
  createWorkspace(o: {
    name: string;
    snapshotTag: string;
    perChildNetns?: boolean;
    memoryLimitMib?: number;
    envs?: Record<string, string>;
  }): Promise<WorkspaceInfo> {
    return this.json('POST', '/v1/workspaces', {
      timeoutMs: 120_000,
      body: {
        name: o.name,
        snapshot_tag: o.snapshotTag,
        per_child_netns: o.perChildNetns,
        memory_limit_mib: o.memoryLimitMib,
        envs: o.envs,
      },
    });
  }
  getWorkspace(name: string): Promise<WorkspaceInfo> {
    return this.json('GET', `/v1/workspaces/${encodeURIComponent(name)}`);
  }
  async deleteWorkspace(name: string): Promise<void> {
    await this.raw('DELETE', `/v1/workspaces/${encodeURIComponent(name)}`);
  }
  suspendWorkspace(name: string, o: { diff?: boolean } = {}): Promise<WorkspaceInfo> {
    return this.json('POST', `/v1/workspaces/${encodeURIComponent(name)}/suspend`, {
      body: { diff: o.diff ?? false },
      timeoutMs: 600_000,
    });
  }
  resumeWorkspace(name: string): Promise<WorkspaceInfo> {
    return this.json('POST', `/v1/workspaces/${encodeURIComponent(name)}/resume`, {
      body: {},
      timeoutMs: 120_000,
    });
  }
}
