/**
 * E2B's code interpreter (sandbox port 49999): `/execute` runs code in a persistent context and answers
 * NDJSON lines (stdout, stderr, results with their MIME representations, an error with its traceback,
 * the execution count); `/contexts` creates, lists, restarts and removes contexts. Python runs in the
 * guest's warm interpreter (numpy already imported), JavaScript in the agent's JS contexts.
 */
import { randomBytes } from 'node:crypto';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { EvalResult } from '../../protocol/agent-api.js';
import type { Controller } from '../controller.js';
import type { LiveSandbox } from '../sandboxes.js';
import { homeOf } from './envd-http.js';
import { DEFAULT_USER, type PlaneRequest } from './sandbox-plane.js';

type Language = 'python' | 'javascript';

interface Context {
  id: string;
  language: Language;
  cwd: string;
  /** Bumped by restart: each generation is a fresh namespace in the guest. */
  generation: number;
  executions: number;
}

const ExecuteBody = z.looseObject({
  code: z.string().max(64 << 20),
  context_id: z.string().max(128).optional(),
  language: z.string().max(32).optional(),
  env_vars: z.record(z.string(), z.string()).optional(),
});
const ContextBody = z.looseObject({
  language: z.string().max(32).optional(),
  cwd: z.string().max(4096).optional(),
});
const CtxId = z.object({ id: z.string().min(1).max(128) });

/** E2B's language names (and common aliases) as the two forkd runs; undefined for the rest. */
export function languageOf(name: string | undefined): Language | undefined {
  const n = (name ?? 'python').toLowerCase();
  if (n === 'python' || n === 'python3' || n === 'py') return 'python';
  if (n === 'javascript' || n === 'js' || n === 'node') return 'javascript';
  return undefined;
}

/** E2B's `text` of a result: the text/plain repr with one pair of surrounding quotes taken off. */
export function resultText(repr: string): string {
  const m = /^(['"])([\s\S]*)\1$/.exec(repr);
  return m ? m[2]! : repr;
}

const MIME_FIELDS: [string, string][] = [
  ['text/html', 'html'],
  ['text/markdown', 'markdown'],
  ['image/svg+xml', 'svg'],
  ['image/png', 'png'],
  ['image/jpeg', 'jpeg'],
  ['text/latex', 'latex'],
  ['application/json', 'json'],
  ['application/javascript', 'javascript'],
];

/** One MIME bundle as a `result` line. */
export function resultLine(bundle: Record<string, unknown>, main: boolean): Record<string, unknown> {
  const line: Record<string, unknown> = { type: 'result', is_main_result: main };
  if (typeof bundle['text/plain'] === 'string') line.text = resultText(bundle['text/plain']);
  for (const [mime, field] of MIME_FIELDS) if (bundle[mime] !== undefined) line[field] = bundle[mime];
  return line;
}

/** An evaluation's outcome as the NDJSON lines E2B's interpreter streams. */
export function executionLines(r: EvalResult, count: number): Record<string, unknown>[] {
  const ts = new Date().toISOString();
  const lines: Record<string, unknown>[] = [];
  if (r.stdout) lines.push({ type: 'stdout', text: r.stdout, timestamp: ts });
  if (r.stderr) lines.push({ type: 'stderr', text: r.stderr, timestamp: ts });
  for (const d of r.displays ?? []) lines.push(resultLine(d, false));
  if (r.ok && r.result !== null) lines.push(resultLine(r.formats ?? { 'text/plain': r.result }, true));
  if (!r.ok && r.error)
    lines.push({ type: 'error', name: r.error.type, value: r.error.message, traceback: r.error.traceback });
  lines.push({ type: 'number_of_executions', execution_count: count });
  lines.push({ type: 'end_of_execution' });
  return lines;
}

export function interpreterRoutes(ctl: Controller): FastifyPluginAsyncZod {
  const contexts = new Map<string, Map<string, Context>>();
  const of = (live: LiveSandbox) => {
    let m = contexts.get(live.rec.id);
    if (!m) {
      const home = homeOf(DEFAULT_USER);
      m = new Map([
        ['default', { id: 'default', language: 'python', cwd: home, generation: 0, executions: 0 }],
        ['default-js', { id: 'default-js', language: 'javascript', cwd: home, generation: 0, executions: 0 }],
      ]);
      contexts.set(live.rec.id, m);
    }
    return m;
  };
  // The default contexts are the guest's own default ones until restarted: what the snapshot's warm-up
  // evaluated (imports, variables) is there in every child's first runCode.
  const internalName = (c: Context) =>
    c.generation === 0 && (c.id === 'default' || c.id === 'default-js')
      ? 'default'
      : `e2b-${c.id}-${c.generation}`;
  const plane = (req: { e2b?: PlaneRequest }) => req.e2b!;
  const json = (c: Context) => ({ id: c.id, language: c.language, cwd: c.cwd });
  const drop = async (live: LiveSandbox, c: Context) => {
    const py = c.language === 'python' ? live.guest.python() : undefined;
    if (py) await (await py).dropContext(internalName(c)).catch(() => false);
  };

  return async (app) => {
    // Forget the contexts of sandboxes that are gone.
    const sweep = setInterval(() => {
      for (const id of contexts.keys()) if (!ctl.sandboxes.live.has(id)) contexts.delete(id);
    }, 30_000);
    sweep.unref();
    app.addHook('onClose', async () => clearInterval(sweep));

    app.post('/execute', { schema: { hide: true, body: ExecuteBody } }, async (req, reply) => {
      const { live } = plane(req);
      const b = req.body;
      if (b.context_id && b.language)
        return reply.status(400).send({ code: 400, message: 'give a context or a language, not both' });
      let ctx: Context | undefined;
      if (b.context_id) {
        ctx = of(live).get(b.context_id);
        if (!ctx) return reply.status(404).type('text/plain').send(`context ${b.context_id} not found`);
      } else {
        const lang = languageOf(b.language);
        if (!lang)
          return reply.status(400).send({
            code: 400,
            message: `language '${b.language}' is not available: python and javascript are`,
          });
        ctx = of(live).get(lang === 'python' ? 'default' : 'default-js')!;
      }
      const r =
        ctx.language === 'python'
          ? await live.guest.eval({
              code: b.code,
              context: internalName(ctx),
              rich: true,
              cwd: ctx.cwd,
              ...(b.env_vars ? { env: b.env_vars } : {}),
            })
          : await (
              await live.guest.agent()
            ).eval({ code: b.code, language: 'js', context: internalName(ctx) });
      ctx.executions += 1;
      const body = executionLines(r, ctx.executions)
        .map((l) => JSON.stringify(l) + '\n')
        .join('');
      return reply.status(200).type('application/x-ndjson').send(body);
    });

    app.post('/contexts', { schema: { hide: true, body: ContextBody } }, async (req, reply) => {
      const { live } = plane(req);
      const lang = languageOf(req.body.language);
      if (!lang)
        return reply.status(400).send({
          code: 400,
          message: `language '${req.body.language}' is not available: python and javascript are`,
        });
      const c: Context = {
        id: randomBytes(8).toString('hex'),
        language: lang,
        cwd: req.body.cwd ?? homeOf(DEFAULT_USER),
        generation: 0,
        executions: 0,
      };
      of(live).set(c.id, c);
      return json(c);
    });

    app.get('/contexts', { schema: { hide: true } }, async (req) =>
      [...of(plane(req).live).values()].map(json),
    );

    app.delete('/contexts/:id', { schema: { hide: true, params: CtxId } }, async (req, reply) => {
      const { live } = plane(req);
      const c = of(live).get(req.params.id);
      if (!c) return reply.status(404).type('text/plain').send(`context ${req.params.id} not found`);
      of(live).delete(c.id);
      await drop(live, c);
      return reply.status(204).send();
    });

    app.post('/contexts/:id/restart', { schema: { hide: true, params: CtxId } }, async (req, reply) => {
      const { live } = plane(req);
      const c = of(live).get(req.params.id);
      if (!c) return reply.status(404).type('text/plain').send(`context ${req.params.id} not found`);
      await drop(live, c);
      c.generation += 1;
      c.executions = 0;
      return reply.status(204).send();
    });
  };
}
