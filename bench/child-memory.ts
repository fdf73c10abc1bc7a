import fs from 'node:fs';

/** VMM private memory and guest copy-on-write of one child QEMU, from /proc/PID/smaps. */
export function childMemory(
  pid: number,
  memFile: string,
): { vmmPrivateKiB: number; guestCowKiB: number; pssKiB: number } {
  const smaps = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n');
  let inGuestRam = false;
  let vmm = 0;
  let cow = 0;
  let pss = 0;
  for (const line of smaps) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      inGuestRam = line.endsWith(memFile);
      continue;
    }
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    const kb = Number(m[2]);
    if (m[1] === 'Pss') pss += kb;
    // Guest CoW = anonymous pages inside the MAP_PRIVATE RAM mapping (Private_Dirty over-counts once
    // the file's other mappers are gone; spike-branch §4.6).
    if (inGuestRam && m[1] === 'Anonymous') cow += kb;
    if (!inGuestRam && m[1] === 'Private_Dirty') vmm += kb;
  }
  return { vmmPrivateKiB: vmm, guestCowKiB: cow, pssKiB: pss };
}
