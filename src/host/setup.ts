import readline from 'node:readline/promises';
import { ForkdError } from '../util/errors.js';
import { run } from '../util/proc.js';
import type { Reporter } from '../util/report.js';
import { missingPackages } from './requirements.js';

/**
 * Install what the host lacks with apt. Asks first unless `yes`; refuses to guess without a terminal.
 * Idempotent: nothing to do when everything is present.
 */
export async function setupHost(opts: { yes: boolean }, rep: Reporter): Promise<{ installed: string[] }> {
  const missing = await missingPackages();
  if (!missing.length) {
    rep.ok('host has everything forkd needs');
    return { installed: [] };
  }
  rep.step(`host setup: ${missing.length} Debian package(s) to install`);
  for (const m of missing) rep.info(`${m.pkg.padEnd(16)} ${m.why}`);
  if (process.getuid?.() !== 0)
    throw new ForkdError(
      'host_unsupported',
      'installing packages needs root',
      'run: sudo -E forkd setup --yes',
    );
  if (!opts.yes) {
    if (!process.stdin.isTTY)
      throw new ForkdError(
        'bad_input',
        'not a terminal, so cannot ask before installing',
        'pass --yes to install without asking',
      );
    const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
    const answer = (await rl.question('proceed with apt-get install? [y/N] ')).trim().toLowerCase();
    rl.close();
    if (answer !== 'y' && answer !== 'yes')
      throw new ForkdError('interrupted', 'host setup cancelled', 'nothing was changed');
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  rep.info('apt-get update');
  const up = await run('apt-get', ['update', '-q'], { env });
  if (up.code !== 0)
    throw new ForkdError(
      'host_unsupported',
      `apt-get update failed:\n${up.stderr.trim().slice(-1500)}`,
      'check the apt sources',
    );
  const pkgs = missing.map((m) => m.pkg);
  let n = 0;
  const inst = await run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...pkgs], {
    env,
    onLine: (l) => {
      if (/^(Unpacking|Setting up) /.test(l)) rep.progress('apt-get install', ++n);
    },
  });
  if (inst.code !== 0)
    throw new ForkdError(
      'host_unsupported',
      `apt-get install failed:\n${inst.stderr.trim().slice(-1500)}`,
      `install by hand: apt-get install ${pkgs.join(' ')}`,
    );
  const still = await missingPackages();
  if (still.length)
    throw new ForkdError(
      'host_unsupported',
      `still missing after install: ${still.map((s) => s.pkg).join(', ')}`,
      'see forkd doctor',
    );
  rep.ok(`installed ${pkgs.join(', ')}`);
  return { installed: pkgs };
}
