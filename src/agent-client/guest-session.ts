import type { EvalRequest, EvalResult } from '../protocol/agent-api.js';
import { AgentClient } from './client.js';
import { PythonPort } from './python-port.js';

interface Connection {
  readonly usable: boolean;
  close(): void;
}

/** One connection, made on first use and made again once it broke; one connect at a time. */
class Reconnecting<T extends Connection> {
  private current: T | undefined;
  private connecting: Promise<T> | undefined;
  private closed = false;

  constructor(
    private readonly connect: () => Promise<T>,
    initial?: T,
  ) {
    this.current = initial;
  }

  get(): Promise<T> {
    if (this.closed) return Promise.reject(new Error('the guest session was closed'));
    if (this.current?.usable) return Promise.resolve(this.current);
    if (!this.connecting) {
      this.current?.close();
      this.current = undefined;
      this.connecting = this.connect()
        .then((c) => {
          if (this.closed) c.close();
          else this.current = c;
          return c;
        })
        .finally(() => (this.connecting = undefined));
    }
    return this.connecting;
  }

  close(): void {
    this.closed = true;
    this.current?.close();
    this.current = undefined;
  }
}

export interface GuestSockets {
  agent: string;
  /** The Python worker's own port, where the guest has one served (MachineConfig.pythonPort). */
  python?: string | undefined;
}

/**
 * Everything the host says to one guest: the agent (exec, files, JS eval) and, where the guest has it,
 * the Python worker's own port (Python eval). Each connection is made on first use, and again after it
 * broke (a restarted agent or worker, a guest that sent garbage); the one owner of a VM holds this.
 */
export class GuestSession {
  private readonly agentConn: Reconnecting<AgentClient>;
  private readonly pythonConn: Reconnecting<PythonPort> | undefined;

  constructor(sockets: GuestSockets, initial: { agent?: AgentClient; python?: PythonPort } = {}) {
    this.agentConn = new Reconnecting(
      () => AgentClient.connect(sockets.agent, { timeoutMs: 30_000 }),
      initial.agent,
    );
    const py = sockets.python;
    this.pythonConn = py
      ? new Reconnecting(() => PythonPort.connect(py, { timeoutMs: 30_000 }), initial.python)
      : undefined;
  }

  /** Whether Python goes to the worker's own port (the daemon records it, for re-adoption). */
  get hasPythonPort(): boolean {
    return this.pythonConn !== undefined;
  }

  agent(): Promise<AgentClient> {
    return this.agentConn.get();
  }

  /** The Python worker's port, or undefined when this guest has none (then Python goes via the agent). */
  python(): Promise<PythonPort> | undefined {
    return this.pythonConn?.get();
  }

  /** Python on the worker's own port where there is one; JavaScript (and older guests) via the agent. */
  async eval(req: EvalRequest): Promise<EvalResult> {
    const py = (req.language ?? 'python') === 'python' ? this.python() : undefined;
    if (py) return (await py).eval(req);
    return (await this.agent()).eval(req);
  }

  close(): void {
    this.agentConn.close();
    this.pythonConn?.close();
  }
}
