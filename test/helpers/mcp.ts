import assert from 'node:assert/strict';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ROOT } from './env.js';

export const FORKD_MCP = path.join(ROOT, 'bin', 'forkd-mcp');

/** The SDK's own client on the server's stdio (the server is `forkd-mcp`, a separate process). */
export async function stdioClient(env: Record<string, string>): Promise<Client> {
  const client = new Client({ name: 'forkd-test', version: '1' });
  const clean = Object.fromEntries(
    Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined),
  );
  await client.connect(
    new StdioClientTransport({ command: process.execPath, args: [FORKD_MCP], env: { ...clean, ...env } }),
  );
  return client;
}

export async function httpClient(url: string, token?: string): Promise<Client> {
  const client = new Client({ name: 'forkd-test', version: '1' });
  await client.connect(
    new StreamableHTTPClientTransport(
      new URL(url),
      token ? { requestInit: { headers: { authorization: `Bearer ${token}` } } } : {},
    ),
  );
  return client;
}

/** Call a tool that must succeed; its structured result. */
export async function call(
  c: Client,
  name: string,
  args: Record<string, unknown> = {},
): Promise<Record<string, unknown>> {
  const r = await c.callTool({ name, arguments: args });
  assert.ok(!r.isError, `${name} failed: ${JSON.stringify(r.content)}`);
  return r.structuredContent as Record<string, unknown>;
}

/** Call a tool that must fail as an MCP tool error (not a crash); its text. */
export async function callError(c: Client, name: string, args: Record<string, unknown>): Promise<string> {
  const r = await c.callTool({ name, arguments: args });
  assert.equal(r.isError, true, `${name} should have failed: ${JSON.stringify(r)}`);
  return (r.content as Array<{ text: string }>).map((x) => x.text).join('\n');
}
