import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { forkdVersion } from '../util/project.js';
import { dataDir } from '../util/paths.js';
import { ForkdError } from '../util/errors.js';
import { loadToken } from './auth.js';
import { Controller } from './controller.js';
import { buildServer } from './server.js';
import { isLoopback, parseBind } from './bind.js';

/** `forkd-controller serve`: the daemon. Every flag also reads an environment variable. */
const program = new Command();
program
  .name('forkd-controller')
  .description('forkd daemon: REST API over snapshots, sandboxes, branches and workspaces')
  .version(forkdVersion())
  .exitOverride();

function env(name: string): string | undefined {
  return process.env[name] || undefined;
}

function positiveInt(name: string, v: string, min = 0): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min)
    throw new ForkdError('bad_input', `${name} must be an integer ≥ ${min} (got '${v}')`);
  return n;
}

program
  .command('serve')
  .description('run the daemon in the foreground')
  .option('--bind <host:port>', 'listen address (env FORKD_BIND)', env('FORKD_BIND') ?? '127.0.0.1:8889')
  .option(
    '--state <file>',
    'state file (env FORKD_STATE)',
    env('FORKD_STATE') ?? path.join(dataDir(), 'controller', 'state.json'),
  )
  .option(
    '--snapshot-root <dir>',
    'where snapshots live (env FORKD_SNAPSHOT_ROOT; default <data dir>/snapshots)',
    env('FORKD_SNAPSHOT_ROOT'),
  )
  .option(
    '--audit-log <file>',
    'audit log, one JSON line per request (env FORKD_AUDIT_LOG)',
    env('FORKD_AUDIT_LOG') ?? path.join(dataDir(), 'controller', 'audit.log'),
  )
  .option(
    '--token-file <file>',
    'bearer token file; required to bind a non-loopback address (env FORKD_TOKEN_FILE)',
    env('FORKD_TOKEN_FILE'),
  )
  .option('--tls-cert <pem>', 'TLS certificate (env FORKD_TLS_CERT)', env('FORKD_TLS_CERT'))
  .option('--tls-key <pem>', 'TLS key (env FORKD_TLS_KEY)', env('FORKD_TLS_KEY'))
  .option(
    '--branch-concurrency <n>',
    'branches at once (env FORKD_BRANCH_CONCURRENCY)',
    env('FORKD_BRANCH_CONCURRENCY') ?? '4',
  )
  .option(
    '--pool-size <n>',
    'prepared children kept per snapshot tag; 0 = off (env FORKD_POOL_SIZE)',
    env('FORKD_POOL_SIZE') ?? '0',
  )
  .option(
    '--pool-max <n>',
    'prepared children over all tags (env FORKD_POOL_MAX)',
    env('FORKD_POOL_MAX') ?? '8',
  )
  .option('--run-dir <dir>', 'sandbox work dirs (env FORKD_RUN_DIR)', env('FORKD_RUN_DIR'))
  .option(
    '--dns-upstream <servers>',
    "where sandbox resolvers look names up, comma-separated host[:port] (env FORKD_DNS_UPSTREAM; default: the host's /etc/resolv.conf)",
    env('FORKD_DNS_UPSTREAM'),
  )
  .option(
    '--e2b-template <name=tag...>',
    'serve snapshot TAG as E2B template NAME, e.g. base=quickstart (every tag is a template under its own name too; env FORKD_E2B_TEMPLATES, comma-separated)',
  )
  .action(async (o: Record<string, string | undefined>) => {
    const { host, port } = parseBind(o.bind!);
    if (o.snapshotRoot) {
      // Snapshots live at <data>/snapshots: point the data dir at the root's parent.
      if (path.basename(o.snapshotRoot) !== 'snapshots')
        throw new ForkdError(
          'bad_input',
          '--snapshot-root must be a directory named "snapshots"',
          'e.g. /var/lib/forkd/snapshots',
        );
      process.env.XDG_DATA_HOME = path.dirname(path.dirname(path.resolve(o.snapshotRoot)));
      if (path.basename(path.dirname(path.resolve(o.snapshotRoot))) !== 'forkd')
        throw new ForkdError(
          'bad_input',
          '--snapshot-root must be <dir>/forkd/snapshots',
          'e.g. /var/lib/forkd/snapshots',
        );
    }
    if (o.runDir) process.env.FORKD_RUN_DIR = path.resolve(o.runDir);
    if (!!o.tlsCert !== !!o.tlsKey)
      throw new ForkdError('bad_input', '--tls-cert and --tls-key must be given together');
    const token = o.tokenFile ? loadToken(o.tokenFile) : undefined;
    if (!token && !isLoopback(host))
      throw new ForkdError(
        'bad_input',
        `refusing to listen on ${host} without authentication: anyone who reaches it would have root on this host`,
        'pass --token-file FILE, or bind a loopback address (127.0.0.1)',
      );
    const branchConcurrency = positiveInt('--branch-concurrency', o.branchConcurrency!, 1);
    // The controller logs through the server's logger, which exists only once the server is built.
    const logTo: { fn?: (m: string) => void } = {};
    const ctl = new Controller({
      stateFile: path.resolve(o.state!),
      branchConcurrency,
      poolSize: positiveInt('--pool-size', o.poolSize!),
      poolMaxTotal: positiveInt('--pool-max', o.poolMax!),
      dnsUpstream: parseDnsUpstream(o.dnsUpstream),
      log: (m) => logTo.fn?.(m),
    });
    const app = await buildServer(ctl, {
      token,
      e2bTemplates: parseTemplates([
        ...((o.e2bTemplate as unknown as string[] | undefined) ?? []),
        ...(env('FORKD_E2B_TEMPLATES')?.split(',').filter(Boolean) ?? []),
      ]),
      auditLog: o.auditLog,
      ...(o.tlsCert ? { tls: { cert: o.tlsCert, key: o.tlsKey! } } : {}),
    });
    logTo.fn = (m) => app.log.info(m);
    await ctl.start();
    await app.listen({ host, port });
    app.log.info(
      `forkd-controller ${forkdVersion()} on ${o.tlsCert ? 'https' : 'http'}://${host}:${port} (auth ${token ? 'on' : 'off: loopback only'}, pool ${o.poolSize}/tag, branch concurrency ${branchConcurrency})`,
    );
    let stopping = false;
    const shutdown = async (sig: string) => {
      if (stopping) return;
      stopping = true;
      app.log.info(`${sig}: shutting down; sandboxes keep running and are re-adopted on the next start`);
      const force = setTimeout(() => process.exit(1), 30_000);
      force.unref();
      await app.close();
      await ctl.stop();
      process.exit(0);
    };
    process.on('SIGINT', () => void shutdown('SIGINT'));
    process.on('SIGTERM', () => void shutdown('SIGTERM'));
    // Last line of defence: a promise nobody awaited (a guest's connection failing after its request
    // was answered, say) is logged; it must not take every other sandbox's daemon down with it.
    process.on('unhandledRejection', (e) =>
      app.log.error({ err: e }, 'unhandled rejection (a bug in forkd; the daemon keeps running)'),
    );
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
  const fe = e instanceof ForkdError ? e : undefined;
  process.stderr.write(
    `forkd-controller: ${(e as Error).message}\n${fe?.hint ? `  hint: ${fe.hint}\n` : ''}`,
  );
  process.exit(fe?.code === 'bad_input' ? 2 : 1);
});

/** `name=tag` pairs of --e2b-template. */
function parseTemplates(pairs: string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const p of pairs) {
    const m = /^([^=\s]{1,256})=([A-Za-z0-9][A-Za-z0-9._-]{0,63})$/.exec(p.trim());
    if (!m)
      throw new ForkdError(
        'bad_input',
        `--e2b-template '${p}' is not NAME=TAG`,
        'e.g. --e2b-template base=quickstart',
      );
    out.set(m[1]!, m[2]!);
  }
  return out;
}

/** `--dns-upstream`: IPv4 servers, each with an optional port. */
function parseDnsUpstream(v: string | undefined): string[] | undefined {
  if (!v) return undefined;
  const servers = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const s of servers)
    if (!/^\d{1,3}(\.\d{1,3}){3}(:\d{1,5})?$/.test(s))
      throw new ForkdError(
        'bad_input',
        `--dns-upstream: '${s}' is not an IPv4 address with an optional :port`,
        'e.g. --dns-upstream 192.0.2.53,192.0.2.54:5353',
      );
  return servers;
}
