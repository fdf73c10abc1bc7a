import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { cli, isolatedDirs } from '../helpers/env.js';

describe('CLI input validation (no VM needed)', () => {
  let dirs: ReturnType<typeof isolatedDirs>;
  before(() => (dirs = isolatedDirs('cli')));
  after(() => dirs.cleanup());

  const bad: Array<[string[], number, RegExp]> = [
    [['fork', '--tag', 'py', '-n', '0'], 2, /-n must be a whole number from 1 to 1000/],
    [['fork', '--tag', 'py', '-n', '1001'], 2, /from 1 to 1000/],
    [['fork', '--tag', 'py', '-n', 'ten'], 2, /whole number/],
    [['fork', '--tag', '../etc', '-n', '1'], 2, /invalid tag/],
    [['fork', '--tag', 'nope', '-n', '1'], 3, /no snapshot tagged 'nope'/],
    [['snapshot', '--tag', 'a/b'], 2, /invalid tag/],
    [
      [
        'snapshot',
        '--tag',
        'x',
        '--kernel',
        '/nonexistent/vmlinux',
        '--initrd',
        '/nonexistent/i',
        '--rootfs',
        '/nonexistent/r',
      ],
      3,
      /kernel \/nonexistent\/vmlinux does not exist/,
    ],
    [
      [
        'snapshot',
        '--tag',
        'x',
        '--mem-size-mib',
        '64',
        '--kernel',
        '/k',
        '--initrd',
        '/i',
        '--rootfs',
        '/r',
      ],
      2,
      /--mem-size-mib must be an integer from 128/,
    ],
    [['rmi', 'nope'], 3, /no snapshot tagged 'nope'/],
    [['parent', 'build', '--recipe', 'nope'], 2, /unknown recipe 'nope'/],
    [['fork', '--tag', 'py', '-n', '1', '--eval-lang', 'ruby'], 2, /--eval-lang must be python or js/],
  ];
  for (const [args, code, msg] of bad) {
    it(`forkd ${args.join(' ')} → exit ${code}`, async () => {
      const r = await cli(args);
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, msg);
      assert.match(r.stderr, /→ /, 'every error carries a fix hint');
    });
  }

  it('refuses to snapshot over an existing tag, without touching it', async () => {
    const dir = path.join(dirs.data, 'forkd', 'snapshots', 'taken');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'marker'), 'keep');
    const r = await cli(['snapshot', '--tag', 'taken']);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr, /already exists.*\n.*forkd rmi taken/);
    assert.equal(fs.readFileSync(path.join(dir, 'marker'), 'utf8'), 'keep');
  });

  it('lists with --json, and errors as JSON with --json', async () => {
    const images = await cli(['images', '--json']);
    assert.equal(images.code, 0);
    assert.ok(Array.isArray(JSON.parse(images.stdout)));
    const where = JSON.parse((await cli(['where', '--json'])).stdout) as Record<string, string>;
    assert.equal(where.data, path.join(dirs.data, 'forkd'));
    const err = await cli(['fork', '--tag', 'nope', '-n', '1', '--json']);
    assert.equal(JSON.parse(err.stdout).code, 'not_found');
    const recipes = JSON.parse((await cli(['parent', 'recipes', '--json'])).stdout) as Array<{
      name: string;
    }>;
    assert.ok(recipes.some((r) => r.name === 'python-numpy'));
  });
});
