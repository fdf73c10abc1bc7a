import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { Controller } from '../sdk/index.js';
import { forkdVersion } from '../util/project.js';
import { TOOLS, toolErrorText } from './tools.js';

/**
 * The forkd MCP server: the tools of tools.ts and read-only listings as resources, all answered by the
 * daemon `controller` points at. A failed call is an MCP tool error naming the fix, never a crash.
 */
export function buildMcpServer(controller: Controller): McpServer {
  const server = new McpServer({ name: 'forkd', version: forkdVersion() });
  for (const t of TOOLS)
    server.registerTool(
      t.name,
      { description: t.description, inputSchema: t.input },
      async (args: Record<string, unknown>) => {
        try {
          const result = await t.run(controller, args);
          return {
            content: [{ type: 'text' as const, text: JSON.stringify(result, null, 2) }],
            structuredContent: result,
          };
        } catch (e) {
          return { isError: true, content: [{ type: 'text' as const, text: toolErrorText(e) }] };
        }
      },
    );
  const listing = (uri: string, load: () => Promise<unknown>) => async () => ({
    contents: [{ uri, mimeType: 'application/json', text: JSON.stringify(await load(), null, 2) }],
  });
  server.registerResource(
    'snapshots',
    'forkd://snapshots',
    { description: 'The warm snapshots of this forkd daemon', mimeType: 'application/json' },
    listing('forkd://snapshots', () => controller.listSnapshots()),
  );
  server.registerResource(
    'sandboxes',
    'forkd://sandboxes',
    { description: 'The running sandboxes of this forkd daemon', mimeType: 'application/json' },
    listing('forkd://sandboxes', () => controller.listSandboxes()),
  );
  return server;
}
