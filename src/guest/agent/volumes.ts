/** Volumes: the host's ext4 image files, found by their block device's serial and mounted where asked. */
import fs from 'node:fs';
import { execFile } from 'node:child_process';

const BUSYBOX = '/opt/forkd/bin/busybox';

/** The /dev node whose virtio-blk serial is `serial` (the host names each volume's device). */
export function deviceBySerial(serial: string): string | undefined {
  for (const dev of fs.readdirSync('/sys/block')) {
    try {
      if (fs.readFileSync(`/sys/block/${dev}/serial`, 'utf8').trim() === serial) return `/dev/${dev}`;
    } catch {
      /* no serial: not a virtio-blk disk */
    }
  }
  return undefined;
}

function bb(args: string[]): Promise<string | undefined> {
  return new Promise((resolve) =>
    execFile(BUSYBOX, args, { timeout: 60_000 }, (e, _out, err) =>
      resolve(e ? err.trim() || e.message : undefined),
    ),
  );
}

export function validateMount(b: {
  serial?: unknown;
  path?: unknown;
  readonly?: unknown;
}): string | undefined {
  if (typeof b.serial !== 'string' || !/^forkd-vol\d{1,2}$/.test(b.serial))
    return '"serial" must be forkd-volN';
  if (
    typeof b.path !== 'string' ||
    !b.path.startsWith('/') ||
    b.path.includes('\0') ||
    b.path.split('/').includes('..')
  )
    return '"path" must be an absolute path';
  if (typeof b.readonly !== 'boolean') return '"readonly" must be a boolean';
  return undefined;
}

export async function mountVolume(
  serial: string,
  path: string,
  readonly: boolean,
): Promise<{ device: string }> {
  const device = deviceBySerial(serial);
  if (!device) throw new Error(`no block device with serial ${serial} in this guest`);
  fs.mkdirSync(path, { recursive: true });
  const err = await bb(['mount', '-t', 'ext4', '-o', `${readonly ? 'ro' : 'rw'},noatime`, device, path]);
  if (err) throw new Error(`mount ${device} on ${path}: ${err}`);
  return { device };
}

export async function unmountVolume(path: string): Promise<void> {
  const err = await bb(['umount', path]);
  if (err) throw new Error(`umount ${path}: ${err}`);
}
