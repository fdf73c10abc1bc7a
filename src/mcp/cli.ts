import type { Command } from 'commander';
import { ForkdError } from '../util/errors.js';
import { runMcp } from './main.js';

/** `forkd mcp` and the `forkd-mcp` bin: options shared by both. */
export function mcpCommand(cmd: Command): Command {
  return cmd
    .description(
      'MCP server for agents (Claude, Cursor, any MCP client): stdio, or Streamable HTTP with --http',
    )
    .option('--http <host:port>', 'serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio')
    .option(
      '--token <token>',
      'bearer token HTTP clients must send (env FORKD_MCP_TOKEN); required off loopback',
    )
    .option('--daemon-url <url>', 'the forkd daemon (env FORKD_URL, default http://127.0.0.1:8889)')
    .option('--daemon-token <token>', "the daemon's bearer token (env FORKD_TOKEN)")
    .action(async (o: { http?: string; token?: string; daemonUrl?: string; daemonToken?: string }) => {
      try {
        await runMcp(o);
      } catch (e) {
        const err = e instanceof ForkdError ? e : new ForkdError('internal', (e as Error).message);
        process.stderr.write(`✗ ${err.message}\n${err.hint ? `  → ${err.hint}\n` : ''}`);
        process.exit(2);
      }
    });
}
