import { ForkdError } from '../util/errors.js';

/** A guest recipe: which Debian packages go into the root filesystem. */
export interface Recipe {
  name: string;
  description: string;
  packages: string[];
  /** Installed with apt-get in the tree after debootstrap: packages whose dependencies it cannot order. */
  aptPackages?: string[];
  /** Default disk size the guest sees (sparse on the host). */
  diskMib: number;
  /**
   * Shell command run in the parent before its snapshot (what `--warmup` overrides): services started
   * here are running in every child the moment it is forked.
   */
  warmup?: string;
}

// Every guest needs: python3 (warm interpreter + the post-restore identity step), nodejs (the agent),
// tini (PID 1 that reaps orphans), iproute2 and procps (basic tooling users expect).
const BASE = ['python3', 'nodejs', 'tini', 'iproute2', 'procps', 'ca-certificates'];

/**
 * PostgreSQL with its cluster made and the postmaster up before the snapshot: every child resumes with
 * its own running server over its own copy-on-write disk, so each has its own database at once. /run
 * is a fresh tmpfs at boot, hence the socket dir; `psql` as postgres over the socket needs no password.
 */
const POSTGRES_WARMUP = [
  'set -e',
  'install -d -o postgres -g postgres -m 2775 /run/postgresql',
  'V=$(ls /usr/lib/postgresql | sort -n | tail -1)',
  'pg_lsclusters -h | grep -q . || pg_createcluster "$V" main',
  'pg_ctlcluster "$V" main start',
  'su postgres -s /bin/sh -c "psql -qAtc \'select 1\'" >/dev/null',
].join('\n');

export const RECIPES: Record<string, Recipe> = {
  base: {
    name: 'base',
    description: 'Debian bookworm minbase + python3 + nodejs + the forkd agent',
    packages: BASE,
    diskMib: 2048,
  },
  'python-numpy': {
    name: 'python-numpy',
    description: 'base + python3-numpy, numpy imported warm in the snapshot',
    packages: [...BASE, 'python3-numpy'],
    diskMib: 2048,
  },
  'python-data': {
    name: 'python-data',
    description:
      'python-numpy + pandas and matplotlib (rich results in the E2B code interpreter: DataFrames as HTML, figures as PNG)',
    packages: [...BASE, 'python3-numpy', 'python3-pandas', 'python3-matplotlib'],
    diskMib: 3072,
  },
  nodejs: {
    name: 'nodejs',
    description:
      'base + npm: Node and npm warm in the snapshot (npm loaded once, its files in the page cache)',
    packages: BASE,
    aptPackages: ['npm'],
    diskMib: 3072,
    warmup: "npm --version >/dev/null && node -e \"require('node:http'); require('node:crypto')\"",
  },
  'postgres-fixture': {
    name: 'postgres-fixture',
    description:
      'base + PostgreSQL, cluster initialised and the postmaster running: each child has its own database',
    packages: [...BASE, 'postgresql', 'postgresql-client'],
    diskMib: 2048,
    warmup: POSTGRES_WARMUP,
  },
};

export function getRecipe(name: string): Recipe {
  const r = RECIPES[name];
  if (!r)
    throw new ForkdError(
      'bad_input',
      `unknown recipe '${name}'`,
      `choose one of: ${Object.keys(RECIPES).join(', ')} (forkd parent recipes)`,
    );
  return r;
}

/** A recipe with extra packages (`--extra`), validated as Debian package names. */
export function withExtras(r: Recipe, extras: string[]): Recipe {
  for (const p of extras)
    if (!/^[a-z0-9][a-z0-9+.-]+$/.test(p))
      throw new ForkdError(
        'bad_input',
        `'${p}' is not a valid Debian package name`,
        'use names as apt-get knows them',
      );
  if (!extras.length) return r;
  return { ...r, name: r.name, packages: [...new Set([...r.packages, ...extras])] };
}
