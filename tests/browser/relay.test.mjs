// Calls through a real TURN relay: Debian's coturn (`turnserver`, started here on free ports;
// .ci/run installs it) and the real `ringline demo` handing out its credentials. A user who
// chose relay-only ("Hide my IP address in calls") connects through the relay, and the other
// party never receives a candidate of theirs that is not a relay candidate.
//
// Environment: as harness.mjs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  freePort,
  inboundBytes,
  launchChromium,
  notice,
  selectedPair,
  signedInTab,
  startRingline,
  stopRingline,
  waitConnected,
  writeCoturnConfig,
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
  const path = writeCoturnConfig({
    workdir,
    secret: TURN_SECRET,
    listeningIp: "127.0.0.1",
    relayIp: "127.0.0.1",
    port,
    relayPorts: [relayBase, relayBase + 99],
  });
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

/** Every candidate of the other side `page` received: as trickled (the remote candidates its
 * connection knows) and inside the SDP (clients that do not trickle). */
function receivedCandidateTypes(page) {
  return page.evaluate(async () => {
    const { pc } = window.ringline.state;
    const trickled = [];
    (await pc.getStats()).forEach((report) => {
      if (report.type === "remote-candidate") trickled.push(report.candidateType);
    });
    const inSdp = [...(pc.remoteDescription?.sdp || "").matchAll(/ typ (\w+)/g)].map((m) => m[1]);
    return [...trickled, ...inSdp];
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

  assert.equal((await selectedPair(ada))[0], "relay", "ada's side of the pair is her relay");
  assert.equal((await selectedPair(grace))[1], "relay", "grace reaches ada only at ada's relay");
  const received = await receivedCandidateTypes(grace);
  assert.ok(received.length > 0, "grace received ada's candidates");
  for (const type of received) assert.equal(type, "relay", `grace received a ${type} candidate of ada's: ${received}`);

  await ada.locator("#hang-up").click();
  await ada.locator("#relay-only").uncheck();
  await ada.context().close();
  await grace.context().close();
});
