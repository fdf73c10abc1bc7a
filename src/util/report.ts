/**
 * How long-running work tells the user what it is doing. The CLI prints to stderr (results go to stdout);
 * library callers and tests can pass `silentReporter`.
 */
export interface Reporter {
  /** A new phase: `==> building rootfs` */
  step(msg: string): void;
  /** Detail under the current phase. */
  info(msg: string): void;
  ok(msg: string): void;
  warn(msg: string): void;
  /** Progress within a phase; `total` may be unknown. Rendered as a bar on a TTY, sparse lines otherwise. */
  progress(label: string, done: number, total?: number): void;
}

export const silentReporter: Reporter = {
  step() {},
  info() {},
  ok() {},
  warn() {},
  progress() {},
};

export function stderrReporter(opts: { color?: boolean } = {}): Reporter {
  const tty = Boolean(process.stderr.isTTY);
  const color = opts.color ?? (tty && !process.env.NO_COLOR);
  const c = (code: string, s: string) => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  let lastBar = '';
  let lastPrinted = 0;
  const clearBar = () => {
    if (lastBar && tty) process.stderr.write('\r\x1b[2K');
    lastBar = '';
  };
  const line = (s: string) => {
    clearBar();
    process.stderr.write(s + '\n');
  };
  return {
    step: (m) => line(c('1', `==> ${m}`)),
    info: (m) => line(`    ${m}`),
    ok: (m) => line(c('32', `✓ ${m}`)),
    warn: (m) => line(c('33', `⚠ ${m}`)),
    progress(label, done, total) {
      const pct = total ? Math.min(100, Math.floor((done / total) * 100)) : undefined;
      if (tty) {
        const width = 30;
        const fill = pct === undefined ? 0 : Math.round((pct / 100) * width);
        const bar =
          pct === undefined
            ? `    ${label} ${done}`
            : `    ${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}%`;
        process.stderr.write('\r\x1b[2K' + bar);
        lastBar = bar;
        if (pct === 100) clearBar();
      } else {
        // Not a terminal (CI logs): a line at most every 5 s, and at the end.
        const now = Date.now();
        if (now - lastPrinted > 5000 || pct === 100) {
          lastPrinted = now;
          process.stderr.write(`    ${label} ${pct === undefined ? done : `${pct}%`}\n`);
        }
      }
    },
  };
}
