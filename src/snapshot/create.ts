import { scaledMs } from '../util/host-speed.js';
import fs from 'node:fs';
import path from 'node:path';
import { snapshotsDir } from '../util/paths.js';
import { ForkdError } from '../util/errors.js';
import { freeBytes, linkOrCopy } from '../util/fs.js';
import { sha256File } from '../util/hash.js';
import { sleep } from '../util/proc.js';
import { createOverlay } from '../vmm/disk.js';
import { bootGuest, consoleTail } from './boot.js';
import { forkdVersion } from '../util/project.js';
import { onInterrupt } from '../util/teardown.js';
import { ms as fmtMs } from '../util/format.js';
import type { Reporter } from '../util/report.js';
import { buildImage, buildImageFromOci, type GuestImage } from '../image/build.js';
import { getRecipe } from '../image/recipes.js';
import { probeAccel, type AccelProbe } from '../host/accel.js';
import { hostCpu } from '../host/cpu.js';
import { QemuVmm, type QemuVm } from '../vmm/qemu.js';
import type { MachineConfig } from '../vmm/types.js';
import { AgentClient } from '../agent-client/client.js';
import type { PingResponse } from '../protocol/agent-api.js';
import { createWorkDir } from '../host/workdir.js';
import { stageSnapshot } from './writer.js';
import { primeAgent } from './prime.js';
import { machineCpu } from '../host/kvm-cpu.js';
import { SNAPSHOT_FORMAT, SNAPSHOT_VERSION, type SnapshotMeta, type SnapshotFile } from './metadata.js';
import { validateTag } from './tag.js';
import { validateVolumes, volumeSerial, type VolumeMeta, type VolumeSpec } from './volumes.js';
import { shellQuote, type VolumeDrive } from '../vmm/qemu-argv.js';
import { snapshotDir, snapshotExists } from './store.js';
import { createTap, deleteLink } from '../network/tap.js';
import { jailEnabled } from '../vmm/jail.js';
import { randomBytes } from 'node:crypto';

export interface CreateSnapshotOptions {
  tag: string;
  recipe?: string;
  /** An OCI/Docker image reference instead of a recipe (`--image`): its root filesystem + our agent. */
  image?: string;
  extras?: string[];
  /** Root disk size for an image guest (default: what the image needs plus room). */
  sizeMib?: number;
  /** Explicit guest parts instead of a recipe's image. */
  kernel?: string;
  initrd?: string;
  rootfs?: string;
  memMib?: number;
  vcpus?: number;
  /** Extra seconds to let the guest settle after the agent (and Python) reported ready. */
  bootWaitSecs?: number;
  /**
   * Run children's request paths in the parent before the snapshot (snapshot/prime.ts). Default true;
   * false only to measure what priming saves (npm run bench:fork).
   */
  prime?: boolean;
  bootTimeoutSecs?: number;
  /** Shell command run in the parent before the snapshot (warm-up); must exit 0. */
  warmup?: string;
  warmupTimeoutSecs?: number;
  /** Code evaluated in the parent's warm Python interpreter before the snapshot (imports, models, state). */
  warmupEval?: string;
  keepWorkdir?: boolean;
  /** Give the guest a virtio-net NIC (10.42.0.2/24); children then each get their own tap. */
  net?: boolean;
  /**
   * An image guest: start the image's Entrypoint + Cmd in the parent before the snapshot (E2B's start
   * command), so its service is already running in every sandbox.
   */
  start?: boolean;
  /** Volumes every sandbox mounts (snapshot/volumes.ts); mounted in the parent for its warm-up only. */
  volumes?: VolumeSpec[];
}

export interface CreateSnapshotResult {
  tag: string;
  dir: string;
  meta: SnapshotMeta;
  accel: AccelProbe;
  workDir?: string;
}

export const GUEST_CMDLINE = 'console=ttyS0 quiet panic=-1 init_on_alloc=0 mitigations=off tsc=reliable';

function checkRange(name: string, v: number, lo: number, hi: number, flag: string): number {
  if (!Number.isInteger(v) || v < lo || v > hi)
    throw new ForkdError(
      'bad_input',
      `${name} must be an integer from ${lo} to ${hi} (got ${v})`,
      `pass ${flag} within that range`,
    );
  return v;
}

function requireFile(p: string, what: string, flag: string): string {
  const abs = path.resolve(p);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isFile())
    throw new ForkdError('not_found', `${what} ${abs} does not exist`, `check the path given to ${flag}`);
  return abs;
}

/**
 * Boot a parent, wait until the agent and the warm Python interpreter are ready, optionally run a
 * warm-up, pause it and save device state; RAM stays in memory.bin (mapped shared by the parent).
 * Written to a staging dir and renamed into place only when complete, so a tag is never half-made.
 */
export async function createSnapshot(
  opts: CreateSnapshotOptions,
  rep: Reporter,
): Promise<CreateSnapshotResult> {
  const tag = validateTag(opts.tag);
  if (snapshotExists(tag) || fs.existsSync(snapshotDir(tag)))
    throw new ForkdError(
      'exists',
      `snapshot '${tag}' already exists`,
      `pick another tag, or remove it first: forkd rmi ${tag}`,
    );
  const memMib = checkRange('--mem-size-mib', opts.memMib ?? 512, 128, 65536, '--mem-size-mib');
  const vcpus = checkRange('--vcpus', opts.vcpus ?? 1, 1, 64, '--vcpus');
  const bootWait = opts.bootWaitSecs ?? 0;
  if (!(bootWait >= 0 && bootWait <= 3600))
    throw new ForkdError(
      'bad_input',
      `--boot-wait-secs must be 0..3600 (got ${bootWait})`,
      'pass a number of seconds',
    );
  if (opts.warmup !== undefined && !opts.warmup.trim())
    throw new ForkdError(
      'bad_input',
      '--warmup must not be empty',
      'pass a shell command, e.g. --warmup "python3 -c 1"',
    );

  // Guest parts: explicit files win over the recipe's image.
  let image: GuestImage | undefined;
  if (opts.image && opts.rootfs)
    throw new ForkdError('bad_input', '--image and --rootfs both name a root filesystem', 'pass one of them');
  if (opts.image)
    image = await buildImageFromOci(
      opts.image,
      { extras: opts.extras ?? [], ...(opts.sizeMib ? { sizeMib: opts.sizeMib } : {}) },
      rep,
    );
  else if (!opts.kernel || !opts.initrd || !opts.rootfs)
    image = await buildImage({ recipe: opts.recipe ?? 'python-numpy', extras: opts.extras ?? [] }, rep);
  // A recipe's own warm-up (services it starts before the snapshot) unless --warmup replaces it.
  const warmup =
    opts.warmup ?? (image && !opts.image ? getRecipe(opts.recipe ?? 'python-numpy').warmup : undefined);
  const kernel = opts.kernel ? requireFile(opts.kernel, 'kernel', '--kernel') : image!.kernel.vmlinux;
  const initrd = opts.initrd ? requireFile(opts.initrd, 'initramfs', '--initrd') : image!.initramfs.path;
  const rootfs = opts.rootfs ? requireFile(opts.rootfs, 'root filesystem', '--rootfs') : image!.rootfs.path;

  const accel = await probeAccel({
    vmlinux: kernel,
    initramfs: initrd,
    kernelKey: image?.kernel.version ?? kernel,
  });
  rep.info(`accelerator: ${accel.accel} (${accel.reason})`);

  const need = memMib * 1048576 + 256 * 1048576;
  const free = freeBytes(snapshotsDir());
  if (free < need)
    throw new ForkdError(
      'out_of_space',
      `not enough free disk for snapshot '${tag}': need ~${Math.ceil(need / 1048576)} MiB, ${Math.floor(free / 1048576)} MiB free in ${snapshotsDir()}`,
      'free some space (forkd images, forkd rmi TAG) or set XDG_DATA_HOME to a larger disk',
    );

  const volumes = validateVolumes(opts.volumes ?? []);
  const net = opts.net ? 'virtio' : 'none';
  const cpu = await machineCpu(accel.accel);
  const machine: MachineConfig = {
    accel: accel.accel,
    vcpus,
    memMib,
    net,
    pythonPort: true,
    ...cpu,
    ...(volumes.length ? { volumes: volumes.length } : {}),
  };
  // The parent's NIC needs a tap of the same kind the children will get; it is not connected anywhere.
  const parentTap = opts.net ? `fkp${randomBytes(4).toString('hex')}` : undefined;
  const vmm = new QemuVmm();
  const qemuVersion = await vmm.version();
  const staged = stageSnapshot(tag);
  const staging = staged.dir;
  const workDir = createWorkDir('parent', tag);
  let vm: QemuVm | undefined;
  let agent: AgentClient | undefined;
  const teardown = async () => {
    agent?.close();
    await vm?.destroy();
    if (parentTap) await deleteLink(parentTap);
    staged.abort();
    if (!opts.keepWorkdir) fs.rmSync(workDir, { recursive: true, force: true });
  };
  const unregister = onInterrupt(teardown);
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  try {
    // A jailed QEMU makes its tap in its own network namespace (vmm/jail.ts).
    if (parentTap && !(await jailEnabled())) await createTap(parentTap);
    linkOrCopy(rootfs, path.join(staging, 'base.ext4'));
    const volumeMeta: VolumeMeta[] = [];
    const drives: VolumeDrive[] = [];
    for (const [i, v] of volumes.entries()) {
      const st = fs.statSync(v.host_path);
      // A writable volume's parent writes go to the snapshot's own layer; children stack theirs on it.
      const overlay = v.mode === 'cow' ? `vol-${i}.qcow2` : null;
      if (overlay) await createOverlay(path.join(staging, overlay), v.host_path, 'raw');
      volumeMeta.push({ ...v, bytes: st.size, mtime_ms: st.mtimeMs, overlay });
      drives.push({
        file: overlay ? path.join(staging, overlay) : v.host_path,
        format: overlay ? 'qcow2' : 'raw',
        readOnly: v.mode === 'ro',
        serial: volumeSerial(i),
      });
    }
    rep.step(`booting parent for '${tag}' [${accel.accel}] (${memMib} MiB, ${vcpus} vCPU)`);
    // In reference-host time: the agent client stretches it to this host's measured speed.
    const bootTimeout = (opts.bootTimeoutSecs ?? (accel.accel === 'tcg' ? 180 : 60)) * 1000;
    const booted = await bootGuest(
      vmm,
      {
        machine,
        workDir,
        kernel,
        initrd,
        cmdline: GUEST_CMDLINE,
        memoryFile: path.join(staging, 'memory.bin'),
        disk: path.join(staging, 'disk.qcow2'),
        ...(drives.length ? { volumes: drives } : {}),
        ...(parentTap ? { tap: parentTap } : {}),
      },
      {
        timeoutMs: bootTimeout,
        // Relative backing file: resolved against the overlay's own directory, so it survives the rename.
        prepare: () => createOverlay(path.join(staging, 'disk.qcow2'), 'base.ext4', 'raw'),
        onRetry: (m) => rep.warn(m),
      },
      (v) => (vm = v),
    );
    vm = booted.vm;
    agent = booted.agent;
    timings.agent_ready_ms = performance.now() - t0;
    rep.info(`agent answered after ${fmtMs(timings.agent_ready_ms)} [${accel.accel}]`);
    const ping = await waitPythonReady(agent, vm, bootTimeout);
    timings.warm_ms = performance.now() - t0;
    rep.info(
      `warm: python ${ping.python.version ?? '-'}${ping.python.numpy ? ` + numpy ${ping.python.numpy}` : ''}, node ${ping.node_version} after ${fmtMs(timings.warm_ms)} [${accel.accel}]`,
    );
    for (const [i, v] of volumes.entries())
      await agent.mountVolume(volumeSerial(i), v.guest_path, v.mode === 'ro');
    if (opts.start) {
      const argv = [...(image?.oci?.run.entrypoint ?? []), ...(image?.oci?.run.cmd ?? [])];
      if (!image?.oci || !argv.length)
        throw new ForkdError(
          'bad_input',
          `--start: ${image?.oci ? `${image.oci.source} has no Entrypoint or Cmd` : 'only an --image guest has a start command'}`,
          'drop --start, or use --warmup "COMMAND &" to start a service',
        );
      // As the image's User, with its Env and WorkingDir (the agent applies them), detached from the
      // exec; its log in /tmp, the one place every user may write.
      const line = `${argv.map(shellQuote).join(' ')} >/tmp/forkd-start.log 2>&1 </dev/null &`;
      rep.info(`start command: ${argv.join(' ')} (output in /tmp/forkd-start.log)`);
      const r = await agent.exec({ cmd: line, timeout_ms: 30_000 });
      if (r.exit_code !== 0)
        throw new ForkdError(
          'bad_input',
          `the start command did not start: ${r.stderr.trim()}`,
          "check the image's Entrypoint and Cmd",
        );
    }
    if (warmup) {
      rep.info(`warm-up: ${warmup.split('\n').join('; ')}`);
      const r = await agent.exec({ cmd: warmup, timeout_ms: (opts.warmupTimeoutSecs ?? 600) * 1000 });
      timings.warmup_ms = r.duration_ms;
      if (r.exit_code !== 0)
        throw new ForkdError(
          'bad_input',
          `warm-up command failed (exit ${r.exit_code ?? r.signal}${r.timed_out ? ', timed out' : ''}):\n${(r.stderr || r.stdout).trim().slice(-2000)}`,
          'fix the --warmup command; it runs in the parent with /bin/sh -c',
        );
    }
    if (opts.warmupEval) {
      rep.info(
        `warm-up eval: ${opts.warmupEval.length > 60 ? opts.warmupEval.slice(0, 57) + '...' : opts.warmupEval}`,
      );
      const r = await agent.eval({
        code: opts.warmupEval,
        timeout_ms: (opts.warmupTimeoutSecs ?? 600) * 1000,
      });
      if (!r.ok)
        throw new ForkdError(
          'bad_input',
          `warm-up eval failed: ${r.error?.type}: ${r.error?.message}\n${r.error?.traceback ?? ''}`.trim(),
          "fix the --warmup-eval code; it runs in the parent's Python interpreter",
        );
    }
    // Each sandbox mounts its volumes after its restore: none may start with the parent's cached view.
    for (const v of [...volumes].reverse()) await agent.unmountVolume(v.guest_path);
    if (bootWait > 0) await sleep(bootWait * 1000);
    agent.close();
    agent = undefined;
    if (opts.prime !== false) {
      const tp = performance.now();
      await primeAgent(vm.agentSocket, bootTimeout, ping.python.ready ? vm.pythonSocket : undefined);
      timings.prime_ms = performance.now() - tp;
      rep.info(`primed the agent's request paths in ${fmtMs(timings.prime_ms)} [${accel.accel}]`);
    }
    const snap = await vmm.snapshot(vm, path.join(staging, 'vmstate'));
    timings.pause_ms = snap.pauseMs;
    rep.info(
      `paused and saved device state in ${fmtMs(snap.pauseMs)} (vmstate ${(snap.vmstateBytes / 1024).toFixed(0)} KiB) [${accel.accel}]`,
    );
    // The parent must never run again on this memory file: children map it MAP_PRIVATE.
    await vm.destroy();
    vm = undefined;
    if (parentTap) await deleteLink(parentTap);

    rep.step('hashing snapshot files');
    const th = performance.now();
    const files = {
      vmstate: await fileEntry(staging, 'vmstate'),
      memory: {
        ...(await fileEntry(staging, 'memory.bin', rep)),
        allocated: fs.statSync(path.join(staging, 'memory.bin')).blocks * 512,
        kind: 'full' as const,
      },
      disk: { ...(await fileEntry(staging, 'disk.qcow2')), backing: 'base.ext4' },
      base:
        image && !opts.rootfs
          ? fileEntryKnown(staging, 'base.ext4', image.rootfs.sha256)
          : await fileEntry(staging, 'base.ext4', rep),
    };
    timings.hash_ms = performance.now() - th;
    timings.total_ms = performance.now() - t0;
    const meta: SnapshotMeta = {
      format: SNAPSHOT_FORMAT,
      version: SNAPSHOT_VERSION,
      tag,
      created_at: new Date().toISOString(),
      forkd_version: forkdVersion(),
      vmm: { kind: 'qemu', version: qemuVersion, ...(accel.accel === 'kvm' ? { cpu: hostCpu() } : {}) },
      accelerator: accel.accel,
      accelerator_reason: accel.reason,
      machine: { accel: accel.accel, vcpus, mem_mib: memMib, net, python_port: true, ...cpu },
      guest: {
        recipe: image && !opts.rootfs ? image.recipe : null,
        image_key: image?.key ?? null,
        kernel_release: image?.kernel.release ?? path.basename(kernel),
        python: ping.python.version ?? null,
        numpy: ping.python.numpy ?? null,
        node: ping.node_version,
        warmup: warmup ?? null,
        warmup_eval: opts.warmupEval ?? null,
        oci: image?.oci
          ? {
              source: image.oci.source,
              manifest_digest: image.oci.manifest_digest,
              config_digest: image.oci.config_digest,
              ...image.oci.run,
              started: Boolean(opts.start),
            }
          : null,
      },
      ...(volumeMeta.length ? { volumes: volumeMeta } : {}),
      files,
      origin: { kind: 'boot', sandbox_id: null, source_tag: null, mode: null, pause_ms: null },
      lineage: { parent_tag: null, parent_content_hash: null, depth: 0 },
      timings: Object.fromEntries(Object.entries(timings).map(([k, v]) => [k, Math.round(v * 10) / 10])),
    };
    staged.commit(meta);
    if (!opts.keepWorkdir) fs.rmSync(workDir, { recursive: true, force: true });
    unregister();
    return { tag, dir: snapshotDir(tag), meta, accel, ...(opts.keepWorkdir ? { workDir } : {}) };
  } catch (e) {
    const guestConsole = vm ? consoleTail(vm.consoleLog) : consoleTail(path.join(workDir, 'console.log'));
    await teardown();
    unregister();
    if (
      e instanceof ForkdError &&
      e.code !== 'agent_failed' &&
      e.code !== 'timeout' &&
      e.code !== 'vmm_failed'
    )
      throw e;
    throw new ForkdError(
      e instanceof ForkdError ? e.code : 'vmm_failed',
      `parent for '${tag}' failed: ${(e as Error).message}${guestConsole ? `\n--- guest console (last lines) ---\n${guestConsole}` : ''}`,
      opts.rootfs
        ? 'a custom --rootfs must contain the forkd agent; use --recipe instead'
        : `re-run with --keep-workdir and read ${workDir}/console.log`,
    );
  }
}

async function waitPythonReady(agent: AgentClient, vm: QemuVm, timeoutMs: number): Promise<PingResponse> {
  const deadline = Date.now() + scaledMs(timeoutMs);
  for (;;) {
    if (!vm.isAlive()) throw new ForkdError('vmm_failed', 'QEMU exited while the guest was warming up');
    const p = await agent.ping();
    if (p.python.ready) return p;
    if (p.python.error && !p.python.error.includes('restarting')) return p; // no python in this guest
    if (Date.now() > deadline)
      throw new ForkdError('timeout', 'the warm Python interpreter did not become ready');
    await sleep(50);
  }
}

export async function fileEntry(dir: string, name: string, rep?: Reporter): Promise<SnapshotFile> {
  const p = path.join(dir, name);
  const st = fs.statSync(p);
  const sha256 = await sha256File(p, rep ? (done) => rep.progress(name, done, st.size) : undefined);
  fs.chmodSync(p, 0o444);
  return { path: name, size: st.size, sha256, mtime_ms: Math.trunc(fs.statSync(p).mtimeMs) };
}

function fileEntryKnown(dir: string, name: string, sha256: string): SnapshotFile {
  const p = path.join(dir, name);
  const st = fs.statSync(p);
  return { path: name, size: st.size, sha256, mtime_ms: Math.trunc(st.mtimeMs) };
}
