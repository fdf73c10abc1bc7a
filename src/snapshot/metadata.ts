import { z } from 'zod';
import { EgressPolicySchema } from '../network/egress-policy.js';
import { VolumeMetaSchema } from './volumes.js';

/** snapshot.json: the on-disk description of one snapshot. Versioned; unknown versions are refused. */
export const SNAPSHOT_FORMAT = 'forkd-snapshot';
export const SNAPSHOT_VERSION = 1;

const FileEntry = z.object({
  path: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** mtime at save time (ms, integer): a cheap "has anyone written this since" check before every fork */
  mtime_ms: z.number(),
});

export const SnapshotMeta = z.object({
  format: z.literal(SNAPSHOT_FORMAT),
  version: z.literal(SNAPSHOT_VERSION),
  tag: z.string(),
  created_at: z.string(),
  forkd_version: z.string(),
  vmm: z.object({
    kind: z.literal('qemu'),
    version: z.string(),
    /** Under KVM (`-cpu host`): the CPU it was saved on, and its ISA features (host/cpu.ts). */
    cpu: z
      .object({
        model: z.string().max(256),
        flags: z.array(z.string().regex(/^[a-z0-9_]{1,64}$/)).max(512),
      })
      .optional(),
  }),
  accelerator: z.enum(['kvm', 'tcg']),
  accelerator_reason: z.string(),
  machine: z.object({
    accel: z.enum(['kvm', 'tcg']),
    vcpus: z.number().int().positive(),
    mem_mib: z.number().int().positive(),
    net: z.enum(['none', 'virtio']),
    /** A firmware guest's -bios image: a file name in the snapshot dir (image/firmware.ts). */
    firmware: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a plain file name in the snapshot dir')
      .optional(),
    /** The guest's Python worker serves its own port (MachineConfig.pythonPort). */
    python_port: z.boolean().optional(),
    /** KVM's -cpu model when not plain `host` (MachineConfig.cpu): a model name and +/- features. */
    cpu: z
      .string()
      .regex(/^[a-z0-9][a-z0-9,+_.-]{0,127}$/, 'a QEMU CPU model with features')
      .optional(),
  }),
  guest: z.object({
    recipe: z.string().nullable(),
    image_key: z.string().nullable(),
    kernel_release: z.string(),
    python: z.string().nullable(),
    numpy: z.string().nullable(),
    node: z.string().nullable(),
    warmup: z.string().nullable(),
    warmup_eval: z.string().nullable().default(null),
    /** A guest made from an OCI/Docker image: where it came from and how the image says to run it. */
    oci: z
      .object({
        source: z.string(),
        manifest_digest: z.string(),
        config_digest: z.string(),
        env: z.array(z.string()),
        working_dir: z.string().nullable(),
        user: z.string().nullable(),
        entrypoint: z.array(z.string()).nullable(),
        cmd: z.array(z.string()).nullable(),
        /** Entrypoint + Cmd was started in the parent (`--start`): it runs in every sandbox. */
        started: z.boolean().optional(),
      })
      .nullish(),
  }),
  /** Volumes every sandbox of this snapshot mounts (volumes.ts); absent: none. */
  volumes: z.array(VolumeMetaSchema).max(24).optional(),
  files: z.object({
    vmstate: FileEntry,
    /**
     * Guest RAM. 'full': a memory image children map directly. 'diff': only the pages that differ from
     * the parent snapshot's memory (see memdiff.ts); children map an image assembled once and cached.
     */
    memory: FileEntry.extend({
      allocated: z.number().int().nonnegative(),
      kind: z.enum(['full', 'diff']).default('full'),
      logical_size: z.number().int().nonnegative().optional(),
    }),
    /** The frozen qcow2 layer the parent wrote; children stack their own overlay on it. */
    disk: FileEntry.extend({ backing: z.string() }),
    /** The read-only raw root filesystem under `disk` (hard link to the built image). */
    base: FileEntry,
  }),
  /** How the snapshot was made: booted parent, or branched from a running sandbox. */
  origin: z
    .object({
      kind: z.enum(['boot', 'branch', 'compact', 'unpack']),
      sandbox_id: z.string().nullable().default(null),
      source_tag: z.string().nullable().default(null),
      mode: z.enum(['full', 'diff', 'live']).nullable().default(null),
      pause_ms: z.number().nullable().default(null),
    })
    .default({ kind: 'boot', sandbox_id: null, source_tag: null, mode: null, pause_ms: null }),
  /** The data parent: a 'diff' snapshot cannot be restored without it (pinned by content hash). */
  lineage: z.object({
    parent_tag: z.string().nullable(),
    parent_content_hash: z.string().nullable(),
    depth: z.number().int().nonnegative(),
  }),
  timings: z.record(z.string(), z.number()),
  /**
   * What its children get unless a spawn says otherwise: their own network namespace, and the egress
   * policy of the sandbox it was branched from (so a fork of a restricted sandbox stays restricted).
   */
  network: z.object({ netns: z.boolean(), egress: EgressPolicySchema.nullable() }).optional(),
});

export type SnapshotMeta = z.infer<typeof SnapshotMeta>;
export type SnapshotFile = z.infer<typeof FileEntry>;

/** The content hash of a snapshot: over its files' hashes (what a chain child pins). */
export function contentHash(meta: SnapshotMeta): string {
  const f = meta.files;
  return [f.vmstate.sha256, f.memory.sha256, f.disk.sha256, f.base.sha256].join(':');
}
