// What every browser test file shares: a free port, the real `ringline demo` binary on it over
// a fresh SQLite file, and headless Debian Chromium with fake camera and microphone.
//
// Environment: RINGLINE_BIN (default ../../target/debug/ringline), CHROMIUM (default
// /usr/bin/chromium).

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const repo = resolve(import.meta.dirname, "../..");
export const binary = process.env.RINGLINE_BIN || join(repo, "target/debug/ringline");
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

export function freePort() {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => done(port));
    });
  });
}

export async function waitForServer(url) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${url}/healthz`)).ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("ringline did not start");
}

/**
 * Starts `ringline demo` on 127.0.0.1:`port` over `workdir`'s database (it keeps its data across
 * restarts) and resolves once it answers `/healthz`.
 */
export async function startRingline({ workdir, port, ringTimeoutSecs, env: extra = {} }) {
  const env = {
    ...process.env,
    RINGLINE_DATABASE_URL: `sqlite://${join(workdir, "ringline.db")}?mode=rwc`,
    RINGLINE_BIND: `127.0.0.1:${port}`,
    RINGLINE_RING_TIMEOUT_SECS: String(ringTimeoutSecs),
    // The same people call each other, unanswered, many times a minute here; the rate caps
    // have tests of their own (tests/tests/end_to_end/call_policy.rs).
    RINGLINE_CALLS_PER_MINUTE: "0",
    RINGLINE_UNANSWERED_CALLS_PER_CALLEE: "0",
    RUST_LOG: "warn",
    ...extra,
  };
  // The server refuses settings it does not know: the tests' own variables stay here.
  delete env.RINGLINE_BIN;
  delete env.RINGLINE_SCREENSHOTS_DIR;
  // Demo sign-in exists only on the development secret.
  delete env.RINGLINE_JWT_SECRET;
  delete env.RINGLINE_ENV;
  const started = spawn(binary, ["demo"], { cwd: workdir, env, stdio: ["ignore", "inherit", "inherit"] });
  await waitForServer(`http://127.0.0.1:${port}`);
  return started;
}

/** Stops a server the way a deploy does (SIGTERM) and waits for it to exit. */
export async function stopRingline(server) {
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.kill("SIGTERM");
  await exited;
}

/** Headless Chromium that grants fake camera and microphone without asking; `executablePath`
 * runs another command in its place (a wrapper that starts it in a network namespace), and
 * `extraArgs` are added to its command line. */
export function launchChromium({ executablePath = chromiumPath, extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--autoplay-policy=no-user-gesture-required",
      // Local candidates as plain IPs, so two tabs on one machine reach each other; and no Local
      // Network Access checks, which block a page that Playwright's routing fulfilled (it has no
      // address space of its own) from opening sockets to 127.0.0.1.
      "--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks",
      ...extraArgs,
    ],
  });
}

/** A signed-in tab for demo `user` at `base`; a fresh browser context is a fresh person. */
export async function signedInTab(browser, base, user, context) {
  const ctx = context || (await browser.newContext({ viewport: { width: 1000, height: 700 } }));
  const page = await ctx.newPage();
  page.on("pageerror", (error) => console.error(`[${user}] page error:`, error));
  await page.goto(base);
  await page.locator(`#demo-users button[data-user="${user}"]`).click();
  await page.locator("#home").waitFor();
  await page.waitForFunction(() => document.getElementById("connection").textContent === "online");
  return page;
}

/** Bytes of media the page's peer connection has received so far. */
export async function inboundBytes(page) {
  return page.evaluate(async () => {
    const stats = await window.ringline.state.pc.getStats();
    let bytes = 0;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp") bytes += report.bytesReceived || 0;
    });
    return bytes;
  });
}

export async function waitConnected(page, timeout = 20_000) {
  await page.waitForFunction(() => window.ringline.state.pc?.connectionState === "connected", null, { timeout });
}

/** Waits until the page's notice matches `pattern`, and says what it showed if it never does. */
export async function notice(page, pattern, timeout = 15_000) {
  try {
    await page.waitForFunction(
      (source) => new RegExp(source).test(document.getElementById("notice").textContent),
      pattern.source,
      { timeout },
    );
  } catch (error) {
    const shown = await page.locator("#notice").textContent().catch(() => "(page gone)");
    throw new Error(`the notice never matched ${pattern}; it says ${JSON.stringify(shown)}`, { cause: error });
  }
}

/**
 * Writes a `turnserver` configuration of a test's own into `workdir` and returns its path:
 * coturn's REST-secret mode (`use-auth-secret`, the scheme Ringline mints credentials in),
 * no TLS, listening on `listeningIp:port`, relaying from `relayIp` over ports `relayPorts`.
 * Relaying between two relays on the server's own addresses is allowed: in the tests both
 * browsers' relays are there.
 */
export function writeCoturnConfig({ workdir, secret, listeningIp, relayIp, port, relayPorts: [minPort, maxPort] }) {
  const lines = [
    `listening-ip=${listeningIp}`,
    `relay-ip=${relayIp}`,
    `listening-port=${port}`,
    `min-port=${minPort}`,
    `max-port=${maxPort}`,
    "use-auth-secret",
    `static-auth-secret=${secret}`,
    "realm=ringline.test",
    "fingerprint",
    "no-tls",
    "no-dtls",
    "no-cli",
    "no-multicast-peers",
    "allow-loopback-peers",
    `userdb=${join(workdir, "turndb")}`,
    `pidfile=${join(workdir, "turnserver.pid")}`,
    "log-file=stdout",
    "simple-log",
  ];
  const path = join(workdir, "turnserver.conf");
  writeFileSync(path, `${lines.join("\n")}\n`);
  return path;
}

/** The candidate types (local, remote) of the pair `page`'s peer connection selected. */
export function selectedPair(page) {
  return page.evaluate(async () => {
    const stats = await window.ringline.state.pc.getStats();
    const byId = new Map();
    stats.forEach((report) => byId.set(report.id, report));
    let pair = null;
    stats.forEach((report) => {
      if (report.type === "transport" && report.selectedCandidatePairId) pair = byId.get(report.selectedCandidatePairId);
    });
    return pair && [byId.get(pair.localCandidateId)?.candidateType, byId.get(pair.remoteCandidateId)?.candidateType];
  });
}
