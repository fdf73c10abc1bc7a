/**
 * The recipes forkd ships beyond python-numpy, each forked 3 times on real VMs and used: nodejs (Node +
 * npm warm) and postgres-fixture (the postmaster running before the snapshot: every child has its own
 * database at once, and what one child writes its siblings never see).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cli, isolatedDirs } from '../helpers/env.js';
import { createSnapshot } from '../../src/snapshot/create.js';
import { fork } from '../../src/fork/fork.js';
import { silentReporter } from '../../src/util/report.js';

let dirs: ReturnType<typeof isolatedDirs>;

describe('shipped recipes on real VMs', { timeout: 30 * 60_000 }, () => {
  before(() => (dirs = isolatedDirs('recipes')));
  after(() => dirs?.cleanup());

  it('parent recipes lists them', async () => {
    const r = await cli(['parent', 'recipes', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const names = (JSON.parse(r.stdout) as Array<{ name: string }>).map((x) => x.name);
    for (const n of ['python-numpy', 'nodejs', 'postgres-fixture']) assert.ok(names.includes(n), n);
  });

  it('postgres-fixture: 3 children, each with its own running database', async () => {
    const made = await createSnapshot({ tag: 'pg', recipe: 'postgres-fixture' }, silentReporter);
    assert.match(made.meta.guest.warmup ?? '', /pg_ctlcluster/);
    const sql =
      "create table t(h text); insert into t values ('$(hostname)'); select string_agg(h, ',') from t";
    const r = await fork(
      { tag: 'pg', n: 3, exec: `cd /tmp && su postgres -s /bin/sh -c "psql -qAt -c \\"${sql}\\""` },
      silentReporter,
    );
    assert.equal(r.ok, 3, JSON.stringify(r.children.map((c) => c.error ?? c.exec?.stderr)));
    for (const c of r.children) {
      assert.equal(c.exec!.exit_code, 0, c.exec!.stderr);
      // The table is new in every child and holds only that child's own row.
      assert.equal(c.exec!.stdout.trim(), c.hostname);
    }
  });

  it('nodejs: 3 children run node and npm', async () => {
    await createSnapshot({ tag: 'node', recipe: 'nodejs' }, silentReporter);
    const r = await fork(
      {
        tag: 'node',
        n: 3,
        exec: 'cd /tmp && npm init -y >/dev/null && node -e "console.log(require(\'/tmp/package.json\').name, process.version)" && npm --version',
        eval: '[1, 2, 3].reduce((a, b) => a + b)',
        evalLanguage: 'js',
      },
      silentReporter,
    );
    assert.equal(r.ok, 3, JSON.stringify(r.children.map((c) => c.error ?? c.exec?.stderr)));
    for (const c of r.children) {
      assert.equal(c.exec!.exit_code, 0, c.exec!.stderr);
      const [first, npmVersion] = c.exec!.stdout.trim().split('\n');
      assert.match(first!, /^tmp v\d+\./);
      assert.match(npmVersion!, /^\d+\.\d+\.\d+$/);
      assert.equal(c.eval?.result, '6');
    }
  });
});
