/** forkd TypeScript SDK: `import { Controller, Sandbox } from 'forkd'`. */
export { Controller } from './controller.js';
export type {
  ControllerOptions,
  SpawnOptions,
  ExecOptions,
  BranchOptions,
  CreateSnapshotOptions,
  NetworkPolicy,
} from './controller.js';
export { Sandbox } from './sandbox.js';
export type { SandboxOpts, Execution, ExecutionError } from './sandbox.js';
export { Commands, CommandHandle } from './commands.js';
export type { CommandResult, CommandStartOpts } from './commands.js';
export { Filesystem } from './filesystem.js';
export * from './errors.js';
export type * from './types.js';
