import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ROOT } from './env.js';

/**
 * A test "internet": one network namespace behind a veth from the host, holding two servers
 * (A = 10.250.8.2, B = 10.250.9.2; TCP 80, 443 and 5432 answer "ok<port>") and a DNS zone served from
 * A (a.test and c.test, a co-hosted neighbour → A, b.test → B, other names NXDOMAIN). Sandboxes reach it through their NAT like any
 * address outside the host; nothing leaves this machine.
 */
export interface TestInternet {
  A: string;
  B: string;
  /** The host's own address on the test network (sandboxes must not reach it). */
  hostAddr: string;
  /** `host:port` of the zone's DNS server (the daemon's --dns-upstream). */
  dns: string;
  close: () => void;
}

export const INTERNET_A = '10.250.8.2';
export const INTERNET_B = '10.250.9.2';

const SERVERS = `
const n = require('net');
for (const p of [80, 443, 5432]) n.createServer((c) => c.end('ok' + p)).listen(p, '0.0.0.0');
const dp = require('dns-packet'), s = require('dgram').createSocket('udp4');
const zone = { 'a.test': '${INTERNET_A}', 'c.test': '${INTERNET_A}', 'b.test': '${INTERNET_B}' };
s.on('message', (m, r) => {
  const q = dp.decode(m), qq = q.questions[0], addr = zone[qq.name];
  const answers = addr && qq.type === 'A' ? [{ type: 'A', name: qq.name, ttl: 60, data: addr }] : [];
  s.send(dp.encode({ type: 'response', id: q.id, flags: addr ? 0 : 3, questions: q.questions, answers }), r.port, r.address);
});
s.bind(53, '${INTERNET_A}');`;

export async function startTestInternet(): Promise<TestInternet> {
  const ns = `fkti-${randomBytes(3).toString('hex')}`;
  const hostIf = `fkti${randomBytes(2).toString('hex')}`;
  const ip = (...a: string[]) => execFileSync('ip', a, { stdio: 'pipe' });
  const hostAddr = '10.250.8.1';
  ip('netns', 'add', ns);
  try {
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('addr', 'add', `${hostAddr}/24`, 'dev', hostIf);
    ip('addr', 'add', '10.250.9.1/24', 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('-n', ns, 'addr', 'add', `${INTERNET_A}/24`, 'dev', 'eth0');
    ip('-n', ns, 'addr', 'add', `${INTERNET_B}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'route', 'add', 'default', 'via', hostAddr);
  } catch (e) {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    throw e;
  }
  // cwd: where `dns-packet` resolves from.
  const servers = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVERS], {
    stdio: 'ignore',
    cwd: ROOT,
  });
  await new Promise((r) => setTimeout(r, 700));
  return {
    A: INTERNET_A,
    B: INTERNET_B,
    hostAddr,
    dns: `${INTERNET_A}:53`,
    close: () => {
      servers.kill();
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    },
  };
}
