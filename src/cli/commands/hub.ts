import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { packSnapshot, defaultPackPath } from '../../hub/pack.js';
import { unpackSnapshot, type UnpackResult } from '../../hub/unpack.js';
import { pullSnapshot } from '../../hub/pull.js';
import { pushSnapshot } from '../../hub/push.js';
import { DEFAULT_HUB_URL } from '../../hub/registry.js';
import { redactUrl } from '../../hub/transfer.js';
import {
  generateKey,
  signingKeyPath,
  trustedDir,
  trustedKeys,
  trustKey,
  untrustKey,
} from '../../hub/signing.js';
import { QemuVmm } from '../../vmm/qemu.js';
import { currentAccel } from '../../host/accel.js';
import { stderrReporter, type Reporter } from '../../util/report.js';
import { bytes, table } from '../../util/format.js';
import { fail, intArg, out, printJson } from '../output.js';

/** Portability: pack / unpack / push / pull, and the keys that sign packs. */
const collect = (v: string, a: string[]) => [...a, v];
const requireSignedDefault = () => /^(1|true|yes)$/i.test(process.env.FORKD_REQUIRE_SIGNED ?? '');

interface VerifyFlags {
  requireSigned?: boolean;
  trustedKey: string[];
}

function verifyOptions(cmd: Command): Command {
  return cmd
    .option(
      '--require-signed',
      'refuse packs that are unsigned or signed by a key not trusted here (env FORKD_REQUIRE_SIGNED=1)',
    )
    .option(
      '--trusted-key <file.pub>',
      'also trust this public key for this command (repeatable)',
      collect,
      [] as string[],
    );
}

const verifyFrom = (o: VerifyFlags) => ({
  trustedKeyFiles: o.trustedKey,
  ...(o.requireSigned || requireSignedDefault() ? { requireSigned: true } : {}),
});

/** Tell the user, before they fork, when the pack was made for another QEMU or accelerator. */
async function compatibilityWarnings(r: UnpackResult, rep: Reporter): Promise<string[]> {
  const warnings: string[] = [];
  try {
    const qemu = `qemu ${await new QemuVmm().version()}`;
    if (qemu !== r.manifest.vmm)
      warnings.push(
        `the pack was made with ${r.manifest.vmm}; this host has ${qemu}, which may not restore it`,
      );
    const accel = await currentAccel();
    if (accel.accel !== r.manifest.accelerator)
      warnings.push(
        `the pack was made under ${r.manifest.accelerator}; guests here run under ${accel.accel}, so forking it will be refused`,
      );
  } catch {
    /* no QEMU here yet: forkd doctor will say so */
  }
  if (r.signature.state === 'unsigned')
    warnings.push('the pack is not signed (integrity checked, authenticity unknown)');
  if (r.signature.state === 'untrusted')
    warnings.push(
      `the pack is signed by key ${r.signature.keyId}, which is not trusted here (forkd trust add KEY.pub)`,
    );
  for (const w of warnings) rep.warn(w);
  return warnings;
}

function unpackJson(r: UnpackResult, warnings: string[]) {
  return {
    head: r.head,
    links: r.links.map((l) => ({
      tag: l.tag,
      packed_as: l.packedAs,
      dir: l.dir,
      parent_tag: l.parent,
      reused: l.reused,
      replaced: l.replaced,
    })),
    signature: r.signature,
    uncompressed_bytes: r.uncompressedBytes,
    deduped_root_disks: r.dedupedBlobs,
    ms: Math.round(r.ms),
    warnings,
  };
}

function printUnpacked(r: UnpackResult): void {
  for (const l of r.links)
    out(
      `✓ link '${l.packedAs}' → '${l.tag}' at ${l.dir}${l.parent ? `  (chain parent: ${l.parent})` : ''}${l.reused ? '  [already here, identical]' : l.replaced ? '  [replaced]' : ''}`,
    );
  if (r.signature.state === 'trusted') out(`✓ signature verified (key ${r.signature.keyId})`);
  out(`✓ unpacked ${r.links.length} chain link(s), head = '${r.head}' in ${(r.ms / 1000).toFixed(1)}s`);
  out(`  next: forkd fork --tag ${r.head} -n <N>`);
}

export function registerHub(program: Command): void {
  program
    .command('pack')
    .description('pack a snapshot (with every chain ancestor) into a portable .forkd-snapshot.tar.zst')
    .requiredOption('--tag <tag>', 'local snapshot to pack')
    .option('-o, --out <file>', 'output file (default ./<tag>.forkd-snapshot.tar.zst)')
    .option('--description <text>', 'human-readable description recorded in manifest.toml')
    .option('--base-image <ref>', 'what the guest was built from (informational)')
    .option('--sign [key]', "sign with a key made by 'forkd keygen' (name or path; default: 'default')")
    .option('--level <n>', 'zstd level 1-19 (default 3; 19 is smallest and slowest)', intArg('--level'))
    .option('--force', 'overwrite the output file')
    .option('--json', 'machine-readable output')
    .action(
      async (o: {
        tag: string;
        out?: string;
        description?: string;
        baseImage?: string;
        sign?: string | boolean;
        level?: number;
        force?: boolean;
        json?: boolean;
      }) => {
        try {
          const r = await packSnapshot(
            {
              tag: o.tag,
              out: o.out ?? defaultPackPath(o.tag),
              ...(o.description ? { description: o.description } : {}),
              ...(o.baseImage ? { baseImage: o.baseImage } : {}),
              ...(o.sign ? { signKey: signingKeyPath(o.sign === true ? 'default' : o.sign) } : {}),
              ...(o.level ? { level: o.level } : {}),
              ...(o.force ? { force: true } : {}),
            },
            stderrReporter(),
          );
          if (o.json)
            return printJson({
              out: r.out,
              tag: r.tag,
              links: r.links,
              compressed_bytes: r.compressedBytes,
              uncompressed_bytes: r.uncompressedBytes,
              ratio: Math.round(r.ratio * 10) / 10,
              ms: Math.round(r.ms),
              signed_by: r.signedBy ?? null,
            });
          out(
            `✓ wrote ${bytes(r.compressedBytes)} (${bytes(r.uncompressedBytes)} uncompressed; ${r.ratio.toFixed(1)}× compression)${r.links.length > 1 ? ` (${r.links.length} chain links)` : ''} in ${(r.ms / 1000).toFixed(1)}s`,
          );
          if (r.signedBy) out(`  signed by key ${r.signedBy}`);
          out(`  next: scp/upload, then \`forkd unpack ${path.basename(r.out)}\` on the target host`);
        } catch (e) {
          fail(e, Boolean(o.json));
        }
      },
    );

  verifyOptions(
    program
      .command('unpack')
      .description('verify a .forkd-snapshot.tar.zst completely, then restore its snapshot(s) here')
      .argument('<file>', 'pack file')
      .option('--tag <tag>', 'restore the head under this tag')
      .option('--force', 'replace existing tags whose content differs')
      .option('--json', 'machine-readable output'),
  ).action(async (file: string, o: VerifyFlags & { tag?: string; force?: boolean; json?: boolean }) => {
    try {
      const rep = stderrReporter();
      const r = await unpackSnapshot(
        { file, ...(o.tag ? { tag: o.tag } : {}), ...(o.force ? { force: true } : {}), ...verifyFrom(o) },
        rep,
      );
      const warnings = await compatibilityWarnings(r, rep);
      if (o.json) return printJson(unpackJson(r, warnings));
      printUnpacked(r);
    } catch (e) {
      fail(e, Boolean(o.json));
    }
  });

  program
    .command('push')
    .description('pack a snapshot and HTTP PUT it to a URL (e.g. a presigned S3/R2 URL)')
    .argument('<url>', 'PUT URL')
    .requiredOption('--tag <tag>', 'local snapshot to push')
    .option('--description <text>', 'description recorded in manifest.toml')
    .option('--base-image <ref>', 'what the guest was built from (informational)')
    .option('--sign [key]', "sign the pack (key name or path; default: 'default')")
    .option('--json', 'machine-readable output')
    .action(
      async (
        url: string,
        o: { tag: string; description?: string; baseImage?: string; sign?: string | boolean; json?: boolean },
      ) => {
        try {
          const r = await pushSnapshot(
            {
              tag: o.tag,
              url,
              ...(o.description ? { description: o.description } : {}),
              ...(o.baseImage ? { baseImage: o.baseImage } : {}),
              ...(o.sign ? { signKey: signingKeyPath(o.sign === true ? 'default' : o.sign) } : {}),
            },
            stderrReporter(),
          );
          const mibs = r.upload.bytes / 1048576 / Math.max(r.upload.ms / 1000, 0.001);
          if (o.json)
            return printJson({
              url: redactUrl(url),
              tag: o.tag,
              size_bytes: r.upload.bytes,
              sha256: r.upload.sha256,
              uncompressed_bytes: r.pack.uncompressedBytes,
              links: r.pack.links,
              upload_ms: Math.round(r.upload.ms),
              signed_by: r.pack.signedBy ?? null,
            });
          out(
            `✓ pushed ${bytes(r.upload.bytes)} in ${(r.upload.ms / 1000).toFixed(1)}s (${mibs.toFixed(1)} MiB/s)`,
          );
          out(
            `  registry entry: "sha256": "${r.upload.sha256}", "size_bytes": ${r.upload.bytes}${r.pack.signedBy ? `, "signer": "${r.pack.signedBy}"` : ''}`,
          );
        } catch (e) {
          fail(e, Boolean(o.json));
        }
      },
    );

  verifyOptions(
    program
      .command('pull')
      .description(
        'download a pack (URL, or owner/name[@version] from the hub registry), verify it, unpack it',
      )
      .argument('<target>', 'https://…/x.forkd-snapshot.tar.zst or owner/name[@version]')
      .option('--tag <tag>', 'restore the head under this tag')
      .option('--force', 'replace existing tags whose content differs')
      .option('--hub <url>', `registry.json URL or path (env FORKD_HUB_URL; default ${DEFAULT_HUB_URL})`)
      .option('--json', 'machine-readable output'),
  ).action(
    async (
      target: string,
      o: VerifyFlags & { tag?: string; force?: boolean; hub?: string; json?: boolean },
    ) => {
      try {
        const rep = stderrReporter();
        const r = await pullSnapshot(
          {
            target,
            hub: o.hub ?? process.env.FORKD_HUB_URL ?? DEFAULT_HUB_URL,
            ...(o.tag ? { tag: o.tag } : {}),
            ...(o.force ? { force: true } : {}),
            ...verifyFrom(o),
          },
          rep,
        );
        const warnings = await compatibilityWarnings(r.unpack, rep);
        if (o.json)
          return printJson({
            source: r.target.name ?? redactUrl(r.target.url),
            download_bytes: r.download.bytes,
            sha256: r.download.sha256,
            sha256_checked: Boolean(r.target.sha256),
            ...unpackJson(r.unpack, warnings),
          });
        printUnpacked(r.unpack);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    },
  );

  program
    .command('keygen')
    .description('make an Ed25519 key for signing packs (its public half is trusted here at once)')
    .option('--name <name>', 'key name', 'default')
    .option('--force', 'replace an existing key of that name')
    .option('--json', 'machine-readable output')
    .action((o: { name: string; force?: boolean; json?: boolean }) => {
      try {
        const k = generateKey(o.name, Boolean(o.force));
        if (o.json)
          return printJson({ key_id: k.keyId, private_key: k.privatePath, public_key: k.publicPath });
        out(`✓ key ${k.keyId}`);
        out(`  private: ${k.privatePath} (keep it secret; mode 0600)`);
        out(`  public:  ${k.publicPath}`);
        out(`  sign with: forkd pack --tag T --sign${o.name === 'default' ? '' : ` ${o.name}`}`);
        out(`  others trust it with: forkd trust add ${path.basename(k.publicPath)}`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });

  const trust = program.command('trust').description('public keys whose signatures are trusted on this host');
  trust
    .command('add')
    .argument('<file.pub>', 'Ed25519 public key (PEM)')
    .option('--json', 'machine-readable output')
    .action((file: string, o: { json?: boolean }) => {
      try {
        const id = trustKey(file);
        if (o.json) return printJson({ key_id: id });
        out(`✓ trusting key ${id}`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });
  trust
    .command('list')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }) => {
      try {
        const keys = [...trustedKeys().keys()].map((id) => ({
          key_id: id,
          file: path.join(trustedDir(), `${id}.pub`),
        }));
        if (o.json) return printJson(keys);
        if (!keys.length)
          return void process.stderr.write('no trusted keys (forkd keygen, or forkd trust add KEY.pub)\n');
        out(
          table(
            ['KEY ID', 'FILE'],
            keys.map((k) => [k.key_id, fs.existsSync(k.file) ? k.file : '-']),
          ),
        );
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });
  trust
    .command('remove')
    .argument('<key-id>', 'key id as shown by trust list')
    .option('--json', 'machine-readable output')
    .action((id: string, o: { json?: boolean }) => {
      try {
        untrustKey(id);
        if (o.json) return printJson({ removed: id });
        out(`✓ no longer trusting ${id}`);
      } catch (e) {
        fail(e, Boolean(o.json));
      }
    });
}
