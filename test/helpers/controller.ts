import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { isolatedDirs } from './env.js';
import { Controller } from '../../src/controller/controller.js';
import { buildServer } from '../../src/controller/server.js';

/** A real controller and REST server in this process (no warm pool), with its own dirs and audit log. */
export async function inProcessController(
  name: string,
  opts: { token?: string } = {},
): Promise<{
  ctl: Controller;
  app: FastifyInstance;
  dirs: ReturnType<typeof isolatedDirs>;
  audit: string;
  close: () => Promise<void>;
}> {
  const dirs = isolatedDirs(name);
  const audit = path.join(dirs.data, 'audit.log');
  const ctl = new Controller({
    stateFile: path.join(dirs.data, 'state.json'),
    branchConcurrency: 2,
    poolSize: 0,
    poolMaxTotal: 0,
    log: () => {},
  });
  await ctl.start();
  const app = await buildServer(ctl, { token: opts.token, auditLog: audit, logger: false });
  return {
    ctl,
    app,
    dirs,
    audit,
    close: async () => {
      await app.close();
      await ctl.stop();
      dirs.cleanup();
    },
  };
}
