// Calls through a real TURN relay: Debian's coturn (`turnserver`, started here on free ports;
// .ci/run installs it) and the real `ringline demo` handing out its credentials. A user who
// chose relay-only ("Hide my IP address in calls") connects through the relay, and the other
// party never receives a candidate of theirs that is not a relay candidate.
//
// Environment: as harness.mjs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  freePort,
  inboundBytes,
  launchChromium,
  notice,
  signedInTab,
  startRingline,
  stopRingline,
  waitConnected,
} from "./harness.mjs";

const TURN_SECRET = "coturn-secret-for-browser-tests";

let server;
let coturn;
let base;
let browser;
let workdir;

/** Resolves once something accepts TCP connections on 127.0.0.1:`port`. */
async function waitForPort(port) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const open = await new Promise((resolve) => {
      const socket = createConnection({ host: "127.0.0.1", port }, () => {
        socket.end();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

/** Starts a `turnserver` of this file's own on 127.0.0.1 and returns its port. */
async function startCoturn() {
  assert.equal(spawnSync("sh", ["-c", "command -v turnserver"]).status, 0, "coturn is not installed (.ci/run installs it)");
  const port = await freePort();
  const relayBase = 40000 + (port % 20000);
  const config = [
    "listening-ip=127.0.0.1",
    "relay-ip=127.0.0.1",
    `listening-port=${port}`,
    `min-port=${relayBase}`,
    `max-port=${relayBase + 99}`,
    "use-auth-secret",
    `static-auth-secret=${TURN_SECRET}`,
    "realm=ringline.test",
    "fingerprint",
    "no-tls",
    "no-dtls",
    "no-cli",
    "no-multicast-peers",
    // Both browsers' relays are on loopback here.
    "allow-loopback-peers",
    `userdb=${join(workdir, "turndb")}`,
    `pidfile=${join(workdir, "turnserver.pid")}`,
    "log-file=stdout",
    "simple-log",
  ].join("\n");
  const path = join(workdir, "turnserver.conf");
  writeFileSync(path, `${config}\n`);
  coturn = spawn("turnserver", ["-c", path], { stdio: "ignore" });
  await waitForPort(port);
  return port;
}

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "ringline-relay-"));
  const turnPort = await startCoturn();
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = await startRingline({
    workdir,
    port,
    ringTimeoutSecs: 30,
    env: {
      RINGLINE_TURN_URLS: `turn:127.0.0.1:${turnPort}?transport=udp,turn:127.0.0.1:${turnPort}?transport=tcp`,
      RINGLINE_TURN_SECRET: TURN_SECRET,
    },
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (server) await stopRingline(server);
  coturn?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
});

/** The candidate types of the pair `page`'s connection selected, and of every candidate the
 * other side sent it. */
function candidates(page) {
  return page.evaluate(async () => {
    const stats = await window.ringline.state.pc.getStats();
    const byId = new Map();
    stats.forEach((report) => byId.set(report.id, report));
    let selected = null;
    stats.forEach((report) => {
      if (report.type === "transport" && report.selectedCandidatePairId) selected = byId.get(report.selectedCandidatePairId);
    });
    const remote = [];
    stats.forEach((report) => {
      if (report.type === "remote-candidate") remote.push(report.candidateType);
    });
    return {
      local: selected && byId.get(selected.localCandidateId)?.candidateType,
      remote: selected && byId.get(selected.remoteCandidateId)?.candidateType,
      received: remote,
      // Whatever arrived inside the SDP as well (clients that do not trickle).
      inSdp: [...(window.ringline.state.pc.remoteDescription?.sdp || "").matchAll(/ typ (\w+)/g)].map((m) => m[1]),
    };
  });
}

test("a relay-only user's call connects through coturn and none of their own candidates reaches the other side", async () => {
  const ada = await signedInTab(browser, base, "ada");
  const grace = await signedInTab(browser, base, "grace");
  await ada.locator("#call-settings summary").click();
  await ada.locator("#relay-only").check();
  await notice(ada, /Call settings saved/);

  await ada.locator('#contacts li[data-user="grace"] .call-video').click();
  await grace.locator("#incoming").waitFor();
  await grace.locator("#accept").click();
  await Promise.all([waitConnected(ada), waitConnected(grace)]);
  const before = await inboundBytes(grace);
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok((await inboundBytes(grace)) > before, "grace receives ada's media");
  const adaBefore = await inboundBytes(ada);
  await new Promise((r) => setTimeout(r, 1500));
  assert.ok((await inboundBytes(ada)) > adaBefore, "ada receives grace's media");

  const seenByGrace = await candidates(grace);
  const seenByAda = await candidates(ada);
  assert.equal(seenByAda.local, "relay", "ada's side of the pair is her relay");
  assert.equal(seenByGrace.remote, "relay", "grace reaches ada only at ada's relay");
  for (const type of [...seenByGrace.received, ...seenByGrace.inSdp]) {
    assert.equal(type, "relay", `grace received a ${type} candidate of ada's: ${JSON.stringify(seenByGrace)}`);
  }
  assert.ok(seenByGrace.received.length + seenByGrace.inSdp.length > 0, "grace received ada's candidates");

  await ada.locator("#hang-up").click();
  await ada.locator("#relay-only").uncheck();
  await ada.context().close();
  await grace.context().close();
});
