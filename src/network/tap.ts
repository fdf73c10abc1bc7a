import { run, runOk } from '../util/proc.js';
import { ForkdError } from '../util/errors.js';

/**
 * Host tap interfaces for guest NICs. A persistent tap is created in the host namespace; QEMU attaches
 * to it by name at start-up; the daemon may then move the interface into the child's own network
 * namespace (the open tap keeps working across the move). Node cannot issue TUNSETIFF itself, so the
 * tap is created with `ip tuntap` rather than opened and passed as an fd.
 */
export async function createTap(name: string): Promise<void> {
  checkIfName(name);
  const r = await run('ip', ['tuntap', 'add', 'dev', name, 'mode', 'tap', 'vnet_hdr']);
  if (r.code !== 0)
    throw new ForkdError(
      'host_unsupported',
      `cannot create tap ${name}: ${r.stderr.trim()}`,
      'forkd needs root (CAP_NET_ADMIN) and /dev/net/tun for guest networking',
    );
}

/** Delete a tap (or any link) in the host namespace or in `netns`. Missing links are fine. */
export async function deleteLink(name: string, netns?: string): Promise<void> {
  await run('ip', [...(netns ? ['-n', netns] : []), 'link', 'del', name]);
}

export function checkIfName(name: string): void {
  if (!/^[A-Za-z0-9_-]{1,15}$/.test(name))
    throw new ForkdError('bad_input', `invalid interface name '${name}' (1-15 of A-Z a-z 0-9 _ -)`);
}

export async function linkExists(name: string, netns?: string): Promise<boolean> {
  const r = await run('ip', [...(netns ? ['-n', netns] : []), 'link', 'show', name]);
  return r.code === 0;
}

export { runOk as ipOk };
