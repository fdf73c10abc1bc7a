/**
 * Teardown on interruption: long-running commands register what must be undone (QEMU processes, work
 * dirs, staging dirs); Ctrl-C / SIGTERM runs it all before exiting, so nothing leaks.
 */
type Fn = () => Promise<void> | void;
const handlers = new Set<Fn>();
let installed = false;
let interrupted = false;

export function onInterrupt(fn: Fn): () => void {
  install();
  handlers.add(fn);
  return () => handlers.delete(fn);
}

export function wasInterrupted(): boolean {
  return interrupted;
}

function install(): void {
  if (installed) return;
  installed = true;
  const run = async (sig: NodeJS.Signals) => {
    if (interrupted) return; // a second Ctrl-C while tearing down: keep tearing down
    interrupted = true;
    process.stderr.write(`\n⚠ ${sig}: stopping and cleaning up...\n`);
    for (const fn of [...handlers].reverse()) {
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`  cleanup step failed: ${(e as Error).message}\n`);
      }
    }
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', () => void run('SIGINT'));
  process.on('SIGTERM', () => void run('SIGTERM'));
  process.on('SIGHUP', () => void run('SIGHUP'));
}
