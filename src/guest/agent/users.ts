/** Guest accounts from /etc/passwd, for running a process as a named user. */
import fs from 'node:fs';

export interface GuestUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

const ROOT: GuestUser = { name: 'root', uid: 0, gid: 0, home: '/root' };

/** The account `name` (root when absent), or undefined when the guest has no such user. */
export function lookupUser(name: string | undefined, passwd = '/etc/passwd'): GuestUser | undefined {
  if (name === undefined || name === 'root') return ROOT;
  let text: string;
  try {
    text = fs.readFileSync(passwd, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 7 || f[0] !== name) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) return undefined;
    return { name, uid, gid, home: f[5] || '/' };
  }
  return undefined;
}

const names = new Map<string, Map<number, string>>();

/** id → name from passwd or group, cached per file (`String(id)` when unknown). */
function nameOf(file: string, id: number): string {
  let m = names.get(file);
  if (!m) {
    m = new Map();
    try {
      for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
        const f = line.split(':');
        if (f.length >= 3 && f[0]) m.set(Number(f[2]), f[0]);
      }
    } catch {
      /* no such file: numbers it is */
    }
    names.set(file, m);
  }
  return m.get(id) ?? String(id);
}

export const userName = (uid: number) => nameOf('/etc/passwd', uid);
export const groupName = (gid: number) => nameOf('/etc/group', gid);
