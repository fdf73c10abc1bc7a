import { ForkdError } from '../util/errors.js';

/** A guest recipe: which Debian packages go into the root filesystem. */
export interface Recipe {
  name: string;
  description: string;
  packages: string[];
  /** Default disk size the guest sees (sparse on the host). */
  diskMib: number;
}

// Every guest needs: python3 (warm interpreter + the post-restore identity step), nodejs (the agent),
// tini (PID 1 that reaps orphans), iproute2 and procps (basic tooling users expect).
const BASE = ['python3', 'nodejs', 'tini', 'iproute2', 'procps', 'ca-certificates'];

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
