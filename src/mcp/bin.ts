import { Command } from 'commander';
import { mcpCommand } from './cli.js';

await mcpCommand(new Command('forkd-mcp')).parseAsync(process.argv);
