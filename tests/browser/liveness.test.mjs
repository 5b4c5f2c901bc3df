// Calls that never get stuck, in a real browser: the other side's media state, a tab closed
// mid-call, a reload mid-call, a socket that drops while ringing, and calling back from the
// history. Same set-up as calls.test.mjs (headless Debian Chromium, fake media, the real
// `ringline demo` binary on 127.0.0.1).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  freePort,
  inboundBytes,
  launchChromium,
  notice,
  signedInTab,
  startRingline,
  waitConnected,
} from "./harness.mjs";

let server;
let base;
let browser;
let workdir;

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "ringline-liveness-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = await startRingline({ workdir, port, ringTimeoutSecs: 20, env: { RINGLINE_LIVENESS_GRACE_SECS: "3" } });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
});

const personTab = (user) => signedInTab(browser, base, user);

async function call(page, token, id) {
  const response = await page.request.get(`${base}/api/calls/${id}/`, { headers: { authorization: `Bearer ${token}` } });
  return response.json();
}

const tokenOf = (page) => page.evaluate(() => window.ringline.state.token);
const callIdOf = (page) => page.evaluate(() => window.ringline.state.call?.id);

/** `caller` video-calls `callee`, who accepts; resolves when both peers are connected. */
async function connectedCall(caller, callee, calleeId) {
  await caller.locator(`#contacts li[data-user="${calleeId}"] .call-video`).click();
  await callee.locator("#incoming").waitFor();
  await callee.locator("#accept").click();
  await Promise.all([waitConnected(caller), waitConnected(callee)]);
  return callIdOf(caller);
}

async function mediaFlowsInto(page) {
  const before = await inboundBytes(page);
  await page.waitForTimeout(1500);
  const later = await inboundBytes(page);
  assert.ok(later > before, `media arrives (${before} → ${later} bytes)`);
}

test("mute and camera-off are shown to the other side", async () => {
  const ada = await personTab("ada");
  const grace = await personTab("grace");
  await connectedCall(ada, grace, "grace");
  const peerMedia = grace.locator("#peer-media");
  assert.equal(await peerMedia.isHidden(), true, "nothing to show while everything is on");

  await ada.locator("#mute").click();
  await grace.waitForFunction(() => /Ada Lovelace: muted$/.test(document.getElementById("peer-media").textContent));
  await ada.locator("#camera").click();
  await grace.waitForFunction(() => /muted, camera off/.test(document.getElementById("peer-media").textContent));
  await ada.locator("#mute").click();
  await grace.waitForFunction(() => /Ada Lovelace: camera off$/.test(document.getElementById("peer-media").textContent));
  assert.equal(await ada.locator("#peer-media").isHidden(), true, "Grace changed nothing");

  await ada.locator("#hang-up").click();
  await grace.locator("#in-call").waitFor({ state: "hidden" });
  await ada.context().close();
  await grace.context().close();
});

test("a tab closed mid-call: the other side shows the dropped peer, then ends the call cleanly", async () => {
  const alan = await personTab("alan");
  const katherine = await personTab("katherine");
  const id = await connectedCall(alan, katherine, "katherine");
  const token = await tokenOf(alan);
  await katherine.context().close();

  await alan.waitForFunction(
    () => /Katherine Johnson's connection dropped/.test(document.getElementById("call-state").textContent),
    null,
    { timeout: 20_000 },
  );
  assert.ok(await alan.locator("#in-call").isVisible(), "still in the call while it may come back");
  await notice(alan, /The connection to Katherine Johnson was lost/, 30_000);
  await alan.locator("#in-call").waitFor({ state: "hidden" });
  const ended = await call(alan, token, id);
  assert.equal(ended.status, "ended");
  assert.equal(ended.end_reason, "ice_failed", "the reason the client reported");
  assert.doesNotMatch(await alan.locator("#notice").textContent(), /TURN/, "not blamed on TURN: it had connected");

  // Nobody is left "already in a call".
  await alan.locator('#contacts li[data-user="ada"] .call-voice').click();
  await alan.locator("#outgoing").waitFor();
  await alan.locator("#cancel").click();
  await alan.context().close();
});

test("a reload mid-call restores the call, with media both ways", async () => {
  const ada = await personTab("ada");
  const grace = await personTab("grace");
  const id = await connectedCall(ada, grace, "grace");
  const token = await tokenOf(ada);

  await grace.reload();
  await grace.locator("#in-call").waitFor({ timeout: 15_000 });
  await Promise.all([waitConnected(grace), waitConnected(ada)]);
  await mediaFlowsInto(grace);
  await mediaFlowsInto(ada);
  assert.equal(await callIdOf(grace), id, "the same call");
  assert.equal((await call(ada, token, id)).status, "active");
  await grace.waitForFunction(() => document.getElementById("call-timer").textContent !== "00:00");

  // The caller reloads too: restored the same way.
  await ada.reload();
  await ada.locator("#in-call").waitFor({ timeout: 15_000 });
  await Promise.all([waitConnected(ada), waitConnected(grace)]);
  await mediaFlowsInto(ada);

  await grace.locator("#hang-up").click();
  await notice(ada, /Call ended/);
  const ended = await call(ada, token, id);
  assert.equal(ended.status, "ended");
  assert.equal(ended.end_reason, "user_hangup");
  await ada.context().close();
  await grace.context().close();
});

test("a reload after the call ended elsewhere does not leave it dangling", async () => {
  const alan = await personTab("alan");
  const katherine = await personTab("katherine");
  const id = await connectedCall(alan, katherine, "katherine");
  const token = await tokenOf(alan);
  // Katherine's tab stops cold (no hang-up is sent), then Alan hangs up while she is away.
  await katherine.evaluate(() => window.ringline.state.socket.close(4000));
  await katherine.goto("about:blank");
  await alan.locator("#hang-up").click();
  await alan.locator("#in-call").waitFor({ state: "hidden" });

  await katherine.goto(base);
  await notice(katherine, /Your call with Alan Turing has ended|Call ended/);
  assert.equal(await katherine.locator("#in-call").isHidden(), true);
  assert.equal(await katherine.evaluate(() => window.ringline.state.call), null);
  assert.equal((await call(alan, token, id)).status, "ended");
  await alan.context().close();
  await katherine.context().close();
});

test("a socket that drops while ringing resumes and learns the call was cancelled", async () => {
  const ada = await personTab("ada");
  const grace = await personTab("grace");
  const urls = [];
  grace.on("websocket", (socket) => urls.push(socket.url()));
  await ada.locator('#contacts li[data-user="grace"] .call-voice').click();
  await grace.locator("#incoming").waitFor();

  // Her network drops; she reconnects three seconds later.
  await grace.evaluate(() => {
    window.ringline.state.reconnectDelay = 3000;
    window.ringline.state.socket.close(4000);
  });
  await grace.waitForFunction(() => document.getElementById("connection").textContent === "Reconnecting…");
  await ada.locator("#cancel").click();
  await grace.locator("#incoming").waitFor({ state: "hidden", timeout: 10_000 });
  await grace.waitForFunction(() => document.getElementById("connection").textContent === "online");
  assert.ok(urls.at(-1).includes("resume="), `the new socket resumed: ${urls.at(-1)}`);

  // The history offers to call back.
  const back = grace.locator("#history li .call-back").first();
  await back.waitFor();
  await back.click();
  await ada.locator("#incoming").waitFor();
  assert.match(await ada.locator("#incoming-from").textContent(), /Grace Hopper is calling/);
  await ada.locator("#decline").click();
  await grace.locator("#outgoing").waitFor({ state: "hidden" });
  await ada.context().close();
  await grace.context().close();
});
