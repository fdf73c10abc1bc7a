import { Command, CommanderError } from 'commander';
import { forkdVersion } from '../util/project.js';
import { registerHost } from './commands/host.js';
import { registerParent } from './commands/parent.js';
import { registerSnapshot } from './commands/snapshot.js';
import { registerFork } from './commands/fork.js';
import { registerQuickstart } from './commands/quickstart.js';
import { registerDaemon } from './commands/daemon.js';
import { registerPortForward } from './commands/port-forward.js';
import { registerLineage } from './commands/lineage.js';
import { registerHub } from './commands/hub.js';
import { registerImage } from './commands/image.js';
import { mcpCommand } from '../mcp/cli.js';
import { registerSandboxVerbs } from './commands/sandbox.js';
import { fail } from './output.js';

const program = new Command();
program
  .name('forkd')
  .description('Fork warm microVMs the way you fork processes (QEMU microvm, copy-on-write memory and disk).')
  .version(forkdVersion())
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

registerQuickstart(program);
registerHost(program);
registerParent(program);
registerSnapshot(program);
registerFork(program);
registerLineage(program);
registerHub(program);
registerDaemon(program);
registerSandboxVerbs(program);
registerImage(program);
mcpCommand(program.command('mcp'));
registerPortForward(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof CommanderError) {
    // Commander already printed its message; map usage errors to exit 2, help/version to 0.
    process.exit(e.exitCode === 0 ? 0 : 2);
  }
  fail(e, process.argv.includes('--json'));
});
