import { controllerFrom, daemonError } from './daemon.js';
import type { Command } from 'commander';
import { createSnapshot } from '../../snapshot/create.js';
import { listSnapshots } from '../../snapshot/store.js';
import { deleteSnapshot, ownBytes } from '../../snapshot/lineage.js';
import { uniqueDiskUsage } from '../../util/fs.js';
import { validateTag } from '../../snapshot/tag.js';
import { parseVolume } from '../../snapshot/volumes.js';
import { stderrReporter } from '../../util/report.js';
import { ago, bytes, ms, table } from '../../util/format.js';
import { ForkdError, errorMessage } from '../../util/errors.js';
import { fail, intArg, numArg, out, printJson } from '../output.js';

interface SnapshotOpts {
  tag: string;
  recipe: string;
  image?: string;
  sizeMib?: number;
  volume?: string[];
  extra: string[];
  kernel?: string;
  initrd?: string;
  rootfs?: string;
  memSizeMib?: number;
  vcpus?: number;
  bootWaitSecs?: number;
  bootTimeoutSecs?: number;
  warmup?: string;
  warmupEval?: string;
  keepWorkdir?: boolean;
  net?: boolean;
  json?: boolean;
  fromSandbox?: string;
  diff?: boolean;
  live?: boolean;
  wait?: boolean;
  daemonUrl?: string;
  daemonToken?: string;
}

/** `snapshot --from-sandbox`: BRANCH through the daemon. */
async function branchFromSandbox(o: SnapshotOpts): Promise<void> {
  if (!o.fromSandbox)
    throw new ForkdError(
      'bad_input',
      '--diff, --live and --no-wait need --from-sandbox ID',
      'list sandboxes with forkd ls',
    );
  if (o.diff && o.live)
    throw new ForkdError('bad_input', '--diff and --live cannot be combined', 'pick one mode');
  const c = controllerFrom(o);
  try {
    const r = await c.branchSandbox(o.fromSandbox, {
      ...(o.tag ? { tag: o.tag } : {}),
      mode: o.diff ? 'diff' : o.live ? 'live' : 'full',
      ...(o.wait === false ? { wait: false } : {}),
    });
    if (o.json) return printJson(r);
    out(`tag:           ${r.tag}`);
    out(`dir:           ${r.dir}`);
    out(`status:        ${r.status}`);
    out(`branched_from: ${r.branched_from}`);
    out(
      `mode:          ${r.mode}  pause ${ms(r.pause_ms ?? 0)}${r.diff_physical_bytes ? `  diff ${bytes(r.diff_physical_bytes)}` : ''}`,
    );
    if (r.warning) process.stderr.write(`⚠ warning: ${r.warning}\n`);
  } catch (e) {
    throw daemonError(e, c.baseUrl);
  }
}

export function registerSnapshot(program: Command): void {
  program
    .command('snapshot')
    .description('boot a parent, warm it up, pause it and save a snapshot under a tag')
    .option('--tag <tag>', 'snapshot tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,63}); required unless --from-sandbox')
    .option('--from-sandbox <id>', 'branch a running sandbox of the daemon instead of booting a parent')
    .option('--diff', 'with --from-sandbox: store only the memory pages that differ from its snapshot')
    .option('--live', 'with --from-sandbox: background snapshot; the sandbox pauses only briefly')
    .option('--no-wait', 'with --from-sandbox: return while the snapshot is still being written')
    .option('--recipe <name>', 'guest image recipe (built if needed)', 'python-numpy')
    .option('--image <ref>', 'an OCI/Docker image instead of a recipe (see forkd from-image)')
    .option(
      '--size-mib <n>',
      'with --image: root disk size (default: what the image needs plus room)',
      intArg('--size-mib'),
    )
    .option(
      '--extra <pkg>',
      "extra package in the guest image (repeatable; with --image: the image's apt-get or apk)",
      (v: string, a: string[]) => [...a, v],
      [] as string[],
    )
    .option(
      '--kernel <path>',
      "guest vmlinux instead of the recipe's (env FORKD_KERNEL)",
      process.env.FORKD_KERNEL,
    )
    .option('--initrd <path>', "guest initramfs instead of the recipe's")
    .option(
      '--rootfs <path>',
      "raw ext4 root filesystem instead of the recipe's (env FORKD_ROOTFS; must contain the forkd agent setup)",
      process.env.FORKD_ROOTFS,
    )
    .option(
      '--volume <HOST:GUEST[:ro|:shared]>',
      'an ext4 image file every sandbox mounts at GUEST (repeatable, up to 24): ro shared by all, default copy-on-write per sandbox, :shared one writer',
      (v: string, a: string[] = []) => [...a, v],
    )
    .option('--mem-size-mib <n>', 'guest RAM in MiB', intArg('--mem-size-mib'), 512)
    .option('--vcpus <n>', 'guest vCPUs', intArg('--vcpus'), 1)
    .option(
      '--boot-wait-secs <s>',
      'extra seconds to let the guest settle after it is warm',
      numArg('--boot-wait-secs'),
      0,
    )
    .option(
      '--boot-timeout-secs <s>',
      'give up if the guest is not warm by then (default 180 under TCG, 60 under KVM)',
      intArg('--boot-timeout-secs'),
    )
    .option('--warmup <cmd>', 'shell command to run in the parent before the snapshot (must exit 0)')
    .option(
      '--warmup-eval <code>',
      "Python code run in the parent's warm interpreter before the snapshot (state every child inherits)",
    )
    .option(
      '--net',
      'give the guest a NIC (10.42.0.2/24); sandboxes can then get their own network namespace',
    )
    .option('--keep-workdir', "keep the parent's work dir (console log, sockets)")
    .option('--json', 'machine-readable output')
    .option('--daemon-url <url>', 'controller URL for --from-sandbox (env FORKD_URL)')
    .option('--daemon-token <token>', 'bearer token for --from-sandbox (env FORKD_TOKEN)')
    .action(async (o: SnapshotOpts) => {
      try {
        if (o.fromSandbox || o.diff || o.live || o.wait === false) return await branchFromSandbox(o);
        if (!o.tag) throw new ForkdError('bad_input', '--tag is required', 'e.g. forkd snapshot --tag py');
        const r = await createSnapshot(
          {
            tag: o.tag,
            recipe: o.recipe,
            ...(o.image ? { image: o.image } : {}),
            ...(o.sizeMib ? { sizeMib: o.sizeMib } : {}),
            ...(o.volume ? { volumes: o.volume.map(parseVolume) } : {}),
            extras: o.extra,
            ...(o.kernel ? { kernel: o.kernel } : {}),
            ...(o.initrd ? { initrd: o.initrd } : {}),
            ...(o.rootfs ? { rootfs: o.rootfs } : {}),
            memMib: o.memSizeMib ?? 512,
            vcpus: o.vcpus ?? 1,
            bootWaitSecs: o.bootWaitSecs ?? 0,
            ...(o.bootTimeoutSecs ? { bootTimeoutSecs: o.bootTimeoutSecs } : {}),
            ...(o.warmup !== undefined ? { warmup: o.warmup } : {}),
            ...(o.warmupEval !== undefined ? { warmupEval: o.warmupEval } : {}),
            keepWorkdir: Boolean(o.keepWorkdir),
            net: Boolean(o.net),
          },
          stderrReporter(),
        );
        if (o.json)
          return printJson({
            tag: r.tag,
            dir: r.dir,
            ...(r.workDir ? { work_dir: r.workDir } : {}),
            snapshot: r.meta,
          });
        const t = r.meta.timings;
        const a = r.meta.accelerator;
        out(`  memory     ${r.meta.machine.mem_mib} MiB (${bytes(r.meta.files.memory.allocated)} touched)`);
        out(`  boot→warm  ${ms(t.warm_ms ?? 0)} [${a}]`);
        out(`  pause      ${ms(t.pause_ms ?? 0)} (stop → device state saved) [${a}]`);
        out(`  total      ${ms(t.total_ms ?? 0)} [${a}]`);
        if (r.workDir) out(`  work dir   ${r.workDir}`);
        out(`✓ tag '${r.tag}' ready at ${r.dir}. Try: forkd fork --tag ${r.tag} -n 10 --eval "1+1"`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('images')
    .description('list local snapshots (SIZE: what each costs on disk beyond the root disk it shares)')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }) => {
      const list = listSnapshots();
      if (o.json)
        return printJson(
          list.map((l) => ({
            tag: l.tag,
            dir: l.dir,
            disk_bytes: l.diskBytes,
            own_bytes: ownBytes(l.dir),
            ...(l.meta
              ? {
                  memory_mib: l.meta.machine.mem_mib,
                  created_at: l.meta.created_at,
                  chain_depth: l.meta.lineage.depth,
                  parent_tag: l.meta.lineage.parent_tag,
                  accelerator: l.meta.accelerator,
                  recipe: l.meta.guest.recipe,
                  qemu: l.meta.vmm.version,
                }
              : { error: l.error }),
          })),
        );
      if (!list.length) return void process.stderr.write('no snapshots yet (forkd snapshot --tag NAME)\n');
      out(
        table(
          ['TAG', 'SIZE', 'MEMORY', 'CREATED', 'CHAIN', 'ACCEL', 'RECIPE'],
          list.map((l) =>
            l.meta
              ? [
                  l.tag,
                  bytes(ownBytes(l.dir)),
                  bytes(l.meta.machine.mem_mib * 1048576),
                  ago(new Date(l.meta.created_at)),
                  String(l.meta.lineage.depth),
                  l.meta.accelerator,
                  l.meta.guest.recipe ?? '-',
                ]
              : [l.tag, bytes(l.diskBytes), '-', '-', '-', '-', `BROKEN: ${l.error}`],
          ),
        ),
      );
      // Root disks are hard-linked between snapshots of one image: count each file once.
      const total = uniqueDiskUsage(list.map((l) => l.dir));
      out(
        `\n${list.length} snapshot${list.length === 1 ? '' : 's'} · ${bytes(total)} total on disk (shared root disks counted once)`,
      );
    });

  program
    .command('rmi')
    .description('remove snapshots')
    .argument('<tags...>', 'snapshot tags')
    .option('--cascade', 'also delete every snapshot that depends on it (leaves first)')
    .option('--force', 'delete even if others depend on it (they become unusable)')
    .option('--json', 'machine-readable output')
    .action((tags: string[], o: { json?: boolean; cascade?: boolean; force?: boolean }) => {
      if (o.cascade && o.force)
        fail(
          new ForkdError('bad_input', '--cascade and --force cannot be combined', 'pick one'),
          Boolean(o.json),
        );
      const results: Array<{ tag: string; ok: boolean; deleted?: string[]; error?: string }> = [];
      for (const tag of tags) {
        try {
          validateTag(tag);
          const deleted = deleteSnapshot(tag, {
            ...(o.cascade ? { cascade: true } : {}),
            ...(o.force ? { force: true } : {}),
          });
          results.push({ tag, ok: true, deleted });
          if (!o.json) out(`✓ ${deleted.join(', ')}`);
        } catch (e) {
          results.push({ tag, ok: false, error: errorMessage(e) });
          if (!o.json)
            process.stderr.write(
              `✗ ${tag}: ${errorMessage(e)}\n${e instanceof ForkdError && e.hint ? `  → ${e.hint}\n` : ''}`,
            );
        }
      }
      if (o.json) printJson(results);
      if (results.some((r) => !r.ok))
        process.exit(results.every((r) => r.error?.startsWith('no snapshot')) ? 3 : 1);
    });
}
