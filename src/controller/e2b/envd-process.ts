/**
 * envd's `process.Process` service over the guest agent's process table: start (streamed), connect,
 * list, stdin, signals. Processes outlive their streams, as the SDK's background commands and
 * `commands.connect(pid)` expect.
 */
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { NdjsonStream } from '../../agent-client/ndjson-stream.js';
import type { ProcEvent, ProcSelector } from '../../protocol/agent-api.js';
import { planeOf, relayAgentStream, toConnectError } from './connect-util.js';
import { homeOf } from './envd-http.js';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { Process, ProcessEventSchema, type ProcessSelector, Signal } from './gen/process/process_pb.js';

/** The agent's event as envd's ProcessEvent (an end by signal reads as E2B's: exit -1, "signal: ..."). */
function toEvent(ev: ProcEvent): MessageInitShape<typeof ProcessEventSchema> {
  switch (ev.type) {
    case 'start':
      return { event: { case: 'start' as const, value: { pid: ev.pid } } };
    case 'data':
      return {
        event: {
          case: 'data' as const,
          value: { output: { case: ev.stream, value: Buffer.from(ev.data, 'base64') } },
        },
      };
    case 'end': {
      const byCode = ev.signal === null;
      const code = byCode ? (ev.exit_code ?? -1) : -1;
      const status = byCode ? `exit status ${code}` : `signal: ${signalWord(ev.signal!)}`;
      return {
        event: {
          case: 'end' as const,
          value: { exitCode: code, exited: byCode, status, ...(code !== 0 ? { error: status } : {}) },
        },
      };
    }
  }
}

const signalWord = (s: string) =>
  s === 'SIGKILL' ? 'killed' : s === 'SIGTERM' ? 'terminated' : s.toLowerCase();

function selector(sel: ProcessSelector | undefined): ProcSelector {
  if (sel?.selector.case === 'pid') return { pid: sel.selector.value };
  if (sel?.selector.case === 'tag') return { tag: sel.selector.value };
  throw new ConnectError('give the process by pid or tag', Code.InvalidArgument);
}

/** Stream a process's events until it ends, the client goes, or the deadline passes. */
function relay(stream: NdjsonStream<ProcEvent>, ctx: HandlerContext) {
  return relayAgentStream<ProcEvent, { event: MessageInitShape<typeof ProcessEventSchema> }>(
    stream,
    ctx,
    'process',
    (ev) => ({ event: toEvent(ev) }),
    () => ({ event: { event: { case: 'keepalive' as const, value: {} } } }),
    (ev) => ev.type === 'end',
  );
}

export const processService: Partial<ServiceImpl<typeof Process>> = {
  async *start(req, ctx) {
    const { live, user } = planeOf(ctx);
    const cfg = req.process;
    if (!cfg?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
    let stream: NdjsonStream<ProcEvent>;
    try {
      const agent = await live.guest.agent();
      stream = await agent.procEvents('start', {
        argv: [cfg.cmd, ...cfg.args],
        env: { ...live.rec.envs, ...cfg.envs },
        cwd: cfg.cwd ?? homeOf(user),
        user,
        stdin: req.stdin ?? true,
        ...(req.pty ? { pty: { cols: req.pty.size?.cols || 80, rows: req.pty.size?.rows || 24 } } : {}),
        ...(req.tag !== undefined ? { tag: req.tag } : {}),
      });
    } catch (e) {
      throw toConnectError(e);
    }
    yield* relay(stream, ctx);
  },

  async *connect(req, ctx) {
    const { live } = planeOf(ctx);
    let stream: NdjsonStream<ProcEvent>;
    try {
      stream = await (await live.guest.agent()).procEvents('attach', selector(req.process));
    } catch (e) {
      throw toConnectError(e);
    }
    yield* relay(stream, ctx);
  },

  async list(_req, ctx) {
    const { live } = planeOf(ctx);
    try {
      const { processes } = await (await live.guest.agent()).listProcs();
      return {
        processes: processes.map((p) => ({
          pid: p.pid,
          config: { cmd: p.argv[0]!, args: p.argv.slice(1), envs: p.env, cwd: p.cwd },
          ...(p.tag !== undefined ? { tag: p.tag } : {}),
        })),
      };
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async sendInput(req, ctx) {
    const { live } = planeOf(ctx);
    const input = req.input?.input;
    if (!input?.case) throw new ConnectError('input.stdin or input.pty is required', Code.InvalidArgument);
    try {
      await (await live.guest.agent()).procInput(selector(req.process), Buffer.from(input.value));
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async closeStdin(req, ctx) {
    const { live } = planeOf(ctx);
    try {
      await (await live.guest.agent()).procCloseStdin(selector(req.process));
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async sendSignal(req, ctx) {
    const { live } = planeOf(ctx);
    const sig =
      req.signal === Signal.SIGKILL ? 'SIGKILL' : req.signal === Signal.SIGTERM ? 'SIGTERM' : undefined;
    if (!sig) throw new ConnectError('signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM', Code.InvalidArgument);
    try {
      await (await live.guest.agent()).procSignal(selector(req.process), sig);
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },

  async update(req, ctx) {
    const { live } = planeOf(ctx);
    const size = req.pty?.size;
    if (!size?.cols || !size.rows)
      throw new ConnectError('pty.size {cols, rows} is required', Code.InvalidArgument);
    try {
      await (await live.guest.agent()).procResize(selector(req.process), size.cols, size.rows);
      return {};
    } catch (e) {
      throw toConnectError(e);
    }
  },
};
