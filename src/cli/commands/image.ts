import type { Command } from 'commander';
import { randomBytes } from 'node:crypto';
import { createSnapshot } from '../../snapshot/create.js';
import { deleteSnapshot } from '../../snapshot/lineage.js';
import { loadSnapshot } from '../../snapshot/store.js';
import { fork } from '../../fork/fork.js';
import { ForkdError } from '../../util/errors.js';
import { stderrReporter, silentReporter } from '../../util/report.js';
import { ms } from '../../util/format.js';
import { fail, intArg, out, printJson } from '../output.js';
import { exitCodeOf } from './sandbox.js';

const collect = (v: string, a: string[]) => [...a, v];

interface FromImageOpts {
  tag: string;
  extra: string[];
  sizeMib?: number;
  memSizeMib: number;
  vcpus: number;
  net?: boolean;
  warmup?: string;
  start?: boolean;
  bootTimeoutSecs?: number;
  json?: boolean;
}

/** `forkd from-image REF --tag T` and `forkd run`: guests from OCI/Docker images, no Docker engine. */
export function registerImage(program: Command): void {
  program
    .command('from-image <ref>')
    .description(
      'snapshot a warm parent made from an OCI/Docker image: NAME[:TAG|@DIGEST] from a registry, docker-archive:FILE, oci-archive:FILE, oci:DIR or docker-daemon:NAME',
    )
    .requiredOption('--tag <tag>', 'snapshot tag')
    .option(
      '--extra <pkg>',
      "package installed with the image's apt-get or apk (repeatable)",
      collect,
      [] as string[],
    )
    .option(
      '--size-mib <n>',
      'root disk size the guest sees (default: what the image needs plus room)',
      intArg('--size-mib'),
    )
    .option('--mem-size-mib <n>', 'guest RAM in MiB', intArg('--mem-size-mib'), 512)
    .option('--vcpus <n>', 'guest vCPUs', intArg('--vcpus'), 1)
    .option('--net', 'give the guest a NIC (sandboxes can then get their own network namespace)')
    .option('--warmup <cmd>', 'shell command run in the parent before the snapshot')
    .option(
      '--start',
      "start the image's Entrypoint + Cmd in the parent (E2B's start command): it runs in every sandbox",
    )
    .option(
      '--boot-timeout-secs <s>',
      'give up if the guest is not warm by then',
      intArg('--boot-timeout-secs'),
    )
    .option('--json', 'machine-readable output')
    .action(async (ref: string, o: FromImageOpts) => {
      try {
        const r = await createSnapshot(
          {
            tag: o.tag,
            image: ref,
            extras: o.extra,
            ...(o.sizeMib ? { sizeMib: o.sizeMib } : {}),
            memMib: o.memSizeMib,
            vcpus: o.vcpus,
            net: Boolean(o.net),
            ...(o.warmup ? { warmup: o.warmup } : {}),
            ...(o.start ? { start: true } : {}),
            ...(o.bootTimeoutSecs ? { bootTimeoutSecs: o.bootTimeoutSecs } : {}),
          },
          stderrReporter(),
        );
        if (o.json) return printJson({ tag: r.tag, dir: r.dir, snapshot: r.meta });
        const oci = r.meta.guest.oci!;
        out(`  image      ${oci.source} (${oci.manifest_digest.slice(0, 19)})`);
        out(`  python     ${r.meta.guest.python ?? 'none (JS eval and exec work)'}`);
        out(`  boot→warm  ${ms(r.meta.timings.warm_ms ?? 0)} [${r.meta.accelerator}]`);
        out(`✓ tag '${r.tag}' ready. Try: forkd fork --tag ${r.tag} -n 3 --exec "cat /etc/os-release"`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  program
    .command('run [cmd...]')
    .description(
      "one-shot: build or reuse the image, snapshot it, fork one child, run CMD (default: the image's entrypoint + cmd) or --eval, print its output, exit with its code, leave nothing behind",
    )
    .option('--image <ref>', 'an OCI/Docker image reference (see forkd from-image)')
    .option('--tag <tag>', 'an existing snapshot instead of an image')
    .option('--eval <code>', "evaluate code in the child's warm interpreter instead of a command")
    .option('--lang <lang>', 'language of --eval: python or js', 'python')
    .option(
      '--extra <pkg>',
      "with --image: package installed with the image's package manager",
      collect,
      [] as string[],
    )
    .option('--mem-size-mib <n>', 'with --image: guest RAM in MiB', intArg('--mem-size-mib'), 512)
    .option(
      '--timeout-secs <n>',
      'kill the command after this long (0: no limit)',
      intArg('--timeout-secs'),
      0,
    )
    .option('--json', 'print one JSON result instead of the output')
    .action(
      async (
        cmd: string[],
        o: {
          image?: string;
          tag?: string;
          eval?: string;
          lang: string;
          extra: string[];
          memSizeMib: number;
          timeoutSecs: number;
          json?: boolean;
        },
      ) => {
        let made: string | undefined;
        let release: (() => Promise<void>) | undefined;
        try {
          if (Boolean(o.image) === Boolean(o.tag))
            throw new ForkdError(
              'bad_input',
              'give exactly one of --image REF or --tag TAG',
              'e.g. forkd run --image alpine -- uname -a',
            );
          if (o.eval !== undefined && cmd.length)
            throw new ForkdError('bad_input', '--eval and a command cannot be combined', 'pass one of them');
          if (o.lang !== 'python' && o.lang !== 'js')
            throw new ForkdError(
              'bad_input',
              `--lang must be python or js (got '${o.lang}')`,
              'e.g. --lang js',
            );
          const rep = o.json ? silentReporter : stderrReporter();
          let tag = o.tag!;
          if (o.image) {
            // The root filesystem is cached by the image; the snapshot is this run's alone.
            tag = `run-${randomBytes(4).toString('hex')}`;
            made = tag;
            await createSnapshot({ tag, image: o.image, extras: o.extra, memMib: o.memSizeMib }, rep);
          }
          const meta = loadSnapshot(tag).meta;
          let argv = cmd;
          if (!argv.length && o.eval === undefined) {
            argv = [...(meta.guest.oci?.entrypoint ?? []), ...(meta.guest.oci?.cmd ?? [])];
            if (!argv.length)
              throw new ForkdError(
                'bad_input',
                `'${o.image ?? tag}' has no entrypoint or cmd to run`,
                'give a command after --',
              );
          }
          const f = await fork({ tag, n: 1, keepRunning: true }, rep);
          release = f.release;
          const child = f.running?.[0];
          if (!child)
            throw new ForkdError(
              'vmm_failed',
              `the child did not start: ${f.children[0]?.error ?? 'unknown'}`,
              're-run with FORKD_DEBUG=1',
            );
          if (o.eval !== undefined) {
            const r = await child.guest
              .eval({ code: o.eval, language: o.lang as 'python' | 'js' })
              .catch((e: Error) => {
                if ((e as { status?: number }).status === 400)
                  throw new ForkdError('bad_input', e.message, 'use --lang js, or an image that has python3');
                throw e;
              });
            if (o.json) printJson(r);
            else {
              if (r.stdout) process.stdout.write(r.stdout);
              if (r.stderr) process.stderr.write(r.stderr);
              if (r.error)
                process.stderr.write(`${r.error.traceback || `${r.error.type}: ${r.error.message}`}\n`);
              else if (r.result !== null) out(r.result);
            }
            process.exitCode = r.ok ? 0 : 1;
          } else {
            const agent = await child.guest.agent();
            const r = await agent.exec({ argv, timeout_ms: o.timeoutSecs * 1000 }, (ev) => {
              if (o.json) return;
              if (ev.type === 'stdout') process.stdout.write(ev.data);
              else if (ev.type === 'stderr') process.stderr.write(ev.data);
            });
            if (o.json) printJson(r);
            process.exitCode = exitCodeOf(r);
          }
        } catch (e) {
          await cleanup(release, made);
          fail(e, Boolean(o.json));
        }
        await cleanup(release, made);
      },
    );
}

async function cleanup(release: (() => Promise<void>) | undefined, tag: string | undefined): Promise<void> {
  await release?.().catch(() => {});
  if (tag)
    try {
      deleteSnapshot(tag);
    } catch {
      /* never made */
    }
}
