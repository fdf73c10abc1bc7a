import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { projectRoot } from '../util/project.js';

/**
 * The files that make up the in-guest agent, as (path inside /opt/forkd, absolute host path) pairs.
 * The agent is compiled with the rest of the project; only Node built-ins and our protocol module are
 * imported, because the guest has no node_modules.
 */
export function agentFiles(): Array<{ dest: string; src: string }> {
  const root = projectRoot();
  const dist = path.join(root, 'dist', 'src');
  const out: Array<{ dest: string; src: string }> = [];
  for (const sub of ['guest/agent', 'protocol']) {
    const dir = path.join(dist, sub);
    if (!fs.existsSync(dir)) throw new Error(`${dir} is missing: run 'npm run build' first`);
    for (const f of fs.readdirSync(dir).sort()) {
      if (f.endsWith('.js')) out.push({ dest: `src/${sub}/${f}`, src: path.join(dir, f) });
    }
  }
  for (const py of ['pyworker.py', 'ptyrelay.py'])
    out.push({ dest: `src/guest/agent/${py}`, src: path.join(root, 'src', 'guest', 'agent', py) });
  out.push({ dest: 'init', src: path.join(root, 'src', 'guest', 'init', 'rootfs-init.sh') });
  return out;
}

export function hashFiles(files: Array<{ dest: string; src: string }>): string {
  const h = createHash('sha256');
  for (const f of files) {
    h.update(f.dest + '\0');
    h.update(fs.readFileSync(f.src));
    h.update('\0');
  }
  return h.digest('hex');
}
