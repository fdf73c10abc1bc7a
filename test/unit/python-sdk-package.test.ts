import { it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT } from '../helpers/env.js';

// The Python SDK installs with pip from the repo, offline (its own stdlib-only build backend), and
// ships its type marker; its behaviour against a daemon is test/python/test_sdk.py (controller.test).
it('pip installs sdk/python offline, with py.typed, and it imports', () => {
  const target = fs.mkdtempSync(path.join(os.tmpdir(), 'forkd-pysdk-'));
  try {
    const pip = spawnSync(
      'python3',
      ['-m', 'pip', 'install', '-q', '--no-index', '--target', target, path.join(ROOT, 'sdk', 'python')],
      { encoding: 'utf8', env: { ...process.env, PIP_DISABLE_PIP_VERSION_CHECK: '1' } },
    );
    assert.equal(pip.status, 0, pip.stderr);
    assert.ok(fs.existsSync(path.join(target, 'forkd', 'py.typed')));
    const py = spawnSync(
      'python3',
      [
        '-c',
        'import forkd, sys; print(forkd.__version__, forkd.Sandbox.create.__name__, sys.version_info >= (3, 9))',
      ],
      { encoding: 'utf8', env: { ...process.env, PYTHONPATH: target }, cwd: target },
    );
    assert.equal(py.status, 0, py.stderr);
    assert.equal(py.stdout.trim(), '0.1.0 create True');
  } finally {
    fs.rmSync(target, { recursive: true, force: true });
  }
});
