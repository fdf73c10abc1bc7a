import http from 'node:http';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { timingSafeEqual } from 'node:crypto';
import { Controller } from '../sdk/index.js';
import { ForkdError } from '../util/errors.js';
import { isLoopback, parseBind } from '../controller/bind.js';
import { buildMcpServer } from './server.js';

export interface McpOptions {
  /** HOST:PORT for Streamable HTTP; stdio when absent. */
  http?: string;
  /** Bearer token HTTP clients must send (env FORKD_MCP_TOKEN); required off loopback. */
  token?: string;
  daemonUrl?: string;
  daemonToken?: string;
}

/** Run the MCP server until its transport closes. Every request goes to the daemon, never to a VM. */
export async function runMcp(o: McpOptions): Promise<void> {
  const controller = new Controller({
    ...(o.daemonUrl ? { baseUrl: o.daemonUrl } : {}),
    ...(o.daemonToken ? { token: o.daemonToken } : {}),
  });
  if (!o.http) {
    await buildMcpServer(controller).connect(new StdioServerTransport());
    return;
  }
  const { host, port } = parseBind(o.http);
  const token = o.token ?? process.env.FORKD_MCP_TOKEN;
  if (!isLoopback(host) && !token)
    throw new ForkdError(
      'bad_input',
      `refusing to serve MCP on ${host} without a token: anyone who reaches it could run code in your sandboxes`,
      'bind 127.0.0.1, or set --token / FORKD_MCP_TOKEN',
    );
  const srv = http.createServer((req, res) => {
    if (token && !bearerOk(req.headers.authorization, token)) {
      res
        .writeHead(401, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'bearer token required' }));
      return;
    }
    if (!req.url?.startsWith('/mcp')) {
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: 'MCP is served at /mcp' }));
      return;
    }
    // Stateless: a server and transport per request, so no session state is kept between calls.
    const server = buildMcpServer(controller);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    server
      .connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch((e: Error) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: e.message }));
      });
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, host, () => resolve());
  });
  const addr = srv.address() as { port: number };
  process.stderr.write(
    `forkd MCP server on http://${o.http.replace(/:\d+$/, `:${addr.port}`)}/mcp (daemon ${controller.baseUrl})\n`,
  );
  await new Promise<void>((resolve) => srv.on('close', resolve));
}

function bearerOk(header: string | undefined, token: string): boolean {
  const got = Buffer.from(/^Bearer (.+)$/.exec(header ?? '')?.[1] ?? '');
  const want = Buffer.from(token);
  return got.length === want.length && timingSafeEqual(got, want);
}
