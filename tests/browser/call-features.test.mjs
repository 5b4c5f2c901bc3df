// What people expect of a call besides ringing and talking, in two real Chromium pages against
// the real `ringline demo` binary: "Ringing…" once the callee's device shows the call, a voice
// call turned video (and back), a screen shared from a voice call (Chromium's fake display
// media), and a second call taken while in one (call waiting).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, launchChromium, signedInTab, startRingline, waitConnected } from "./harness.mjs";

let server;
let base;
let browser;
let workdir;

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "ringline-browser-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = await startRingline({ workdir, port, ringTimeoutSecs: 30 });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
});

const personTab = (user, context) => signedInTab(browser, base, user, context);

/** Bytes (or, with `field`, another counter such as `framesDecoded`) of `kind` media ("audio"
 * or "video") the page's peer connection has received. */
function inbound(page, kind, field = "bytesReceived") {
  return page.evaluate(
    async ([kind, field]) => {
      const stats = await window.ringline.state.pc.getStats();
      let total = 0;
      stats.forEach((report) => {
        if (report.type === "inbound-rtp" && report.kind === kind) total += report[field] || 0;
      });
      return total;
    },
    [kind, field],
  );
}

/** Asserts that `page` receives more and more video: decoded frames grow, and reach its
 * remote video element. */
async function receivesVideo(page, who) {
  await page.waitForFunction(() => document.getElementById("remote-video").videoWidth > 0, null, { timeout: 10_000 });
  const first = await inbound(page, "video", "framesDecoded");
  await page.waitForTimeout(1500);
  const later = await inbound(page, "video", "framesDecoded");
  assert.ok(later > first, `${who} decodes more and more video frames (${first} → ${later})`);
}

/** The call record `page`'s user is in, as the API has it. */
function callRecord(page) {
  return page.evaluate(async () => {
    const { state } = window.ringline;
    const response = await fetch(`/api/calls/${state.call.id}/`, { headers: { Authorization: `Bearer ${state.token}` } });
    return response.json();
  });
}

/** Hangs up from `page` and waits until both pages are out of the call. */
async function hangUp(page, other) {
  await page.locator("#hang-up").click();
  await page.locator("#in-call").waitFor({ state: "hidden" });
  await other.locator("#in-call").waitFor({ state: "hidden" });
}

test('the caller sees "Calling…" until a device of the callee shows the call, then "Ringing…"', async () => {
  const ada = await personTab("ada");
  // Grace has no page open: nothing of hers rings.
  await ada.locator('#contacts li[data-user="grace"] .call-voice').click();
  await ada.locator("#outgoing").waitFor();
  assert.equal(await ada.locator("#outgoing-state").textContent(), "Calling…");
  await ada.waitForTimeout(1000);
  assert.equal(await ada.locator("#outgoing-state").textContent(), "Calling…", "no device of hers said it rings");
  assert.equal((await callRecord(ada)).rang_at, null);

  // Grace opens the app: the ringing call is restored there, and her page says it rings.
  const grace = await personTab("grace");
  await grace.locator("#incoming").waitFor();
  await ada.waitForFunction(() => document.getElementById("outgoing-state").textContent === "Ringing…");
  assert.match(await ada.locator("#outgoing-title").textContent(), /Ringing Grace Hopper…/);
  const record = await callRecord(ada);
  assert.equal(typeof record.rang_at, "string", JSON.stringify(record));
  assert.equal(record.status, "ringing");

  await ada.locator("#cancel").click();
  await grace.locator("#incoming").waitFor({ state: "hidden" });
  await Promise.all([ada.context().close(), grace.context().close()]);
});

test("a voice call turned video by one side, then by the other, and back", async () => {
  const alan = await personTab("alan");
  const katherine = await personTab("katherine");
  await alan.locator('#contacts li[data-user="katherine"] .call-voice').click();
  await katherine.locator("#incoming").waitFor();
  await katherine.locator("#accept").click();
  await Promise.all([waitConnected(alan), waitConnected(katherine)]);
  assert.ok(await katherine.locator("#in-call").evaluate((node) => node.classList.contains("voice")), "a voice call");
  assert.equal(await alan.locator("#camera").textContent(), "Turn camera on");
  assert.equal(await inbound(katherine, "video"), 0, "no video yet");

  // Alan turns his camera on: a renegotiation of the same connection, and Katherine sees him.
  await alan.locator("#camera").click();
  await receivesVideo(katherine, "Katherine");
  assert.ok(!(await katherine.locator("#in-call").evaluate((node) => node.classList.contains("voice"))), "now with video");
  assert.equal(await alan.evaluate(() => window.ringline.state.pc.connectionState), "connected", "the same connection");
  await alan.waitForFunction(
    async () => {
      const { state } = window.ringline;
      const response = await fetch(`/api/calls/${state.call.id}/`, { headers: { Authorization: `Bearer ${state.token}` } });
      return typeof (await response.json()).video_at === "string";
    },
    null,
    { timeout: 10_000, polling: 200 },
  );
  const record = await callRecord(alan);
  assert.equal(record.call_type, "voice", "placed as a voice call");
  assert.ok(record.video_at >= record.answered_at, JSON.stringify(record));

  // Katherine turns hers on too: Alan sees her.
  await katherine.locator("#camera").click();
  await receivesVideo(alan, "Alan");

  // And off again: the button flips the track, the other side shows "camera off".
  await alan.locator("#camera").click();
  assert.equal(await alan.evaluate(() => window.ringline.state.localStream.getVideoTracks()[0].enabled), false);
  await katherine.waitForFunction(() => /camera off/.test(document.getElementById("peer-media").textContent));
  await hangUp(alan, katherine);
  // The history says what the call became.
  await alan.waitForFunction(() => /Outgoing voice call · .* · video from \d\d:\d\d/.test(document.getElementById("history").textContent));
  await Promise.all([alan.context().close(), katherine.context().close()]);
});

test("a screen shared from a voice call, without a camera, is seen and labelled on the other side", async () => {
  const ada = await personTab("ada");
  const alan = await personTab("alan");
  await ada.locator('#contacts li[data-user="alan"] .call-voice').click();
  await alan.locator("#incoming").waitFor();
  await alan.locator("#accept").click();
  await Promise.all([waitConnected(ada), waitConnected(alan)]);
  assert.equal(await ada.evaluate(() => window.ringline.state.localStream.getVideoTracks().length), 0, "no camera");

  await ada.locator("#screen").click();
  await receivesVideo(alan, "Alan");
  await alan.waitForFunction(() => /sharing their screen/.test(document.getElementById("peer-media").textContent));
  assert.equal(await ada.locator("#screen").textContent(), "Stop sharing");
  // A screen is not the camera: the call has no video_at from it.
  assert.equal((await callRecord(alan)).video_at, null);

  await ada.locator("#screen").click();
  await alan.waitForFunction(() => !/sharing their screen/.test(document.getElementById("peer-media").textContent));
  assert.equal(await ada.locator("#screen").textContent(), "Share screen");
  await hangUp(ada, alan);
  await Promise.all([ada.context().close(), alan.context().close()]);
});

test("call waiting: a second call rings over the first, and answering it switches the call", async () => {
  const grace = await personTab("grace");
  const alan = await personTab("alan");
  const ada = await personTab("ada");
  await grace.locator("#call-settings summary").click();
  await grace.locator("#call-waiting").check();
  await grace.waitForFunction(() => /Call waiting is on/.test(document.getElementById("notice").textContent));

  await alan.locator('#contacts li[data-user="grace"] .call-voice').click();
  await grace.locator("#incoming").waitFor();
  await grace.locator("#accept").click();
  await Promise.all([waitConnected(alan), waitConnected(grace)]);

  // Ada calls Grace, who is busy: it rings for her over the call (and Ada hears it ring).
  await ada.locator('#contacts li[data-user="grace"] .call-video').click();
  await grace.locator("#waiting").waitFor();
  assert.match(await grace.locator("#waiting-title").textContent(), /Ada Lovelace is calling \(video\)/);
  await ada.waitForFunction(() => document.getElementById("outgoing-state").textContent === "Ringing…");
  assert.equal(await grace.evaluate(() => window.ringline.state.pc.connectionState), "connected", "the first call goes on");
  const first = await grace.evaluate(() => window.ringline.state.call.id);

  await grace.locator("#waiting-accept").click();
  await Promise.all([waitConnected(ada), waitConnected(grace)]);
  await alan.locator("#in-call").waitFor({ state: "hidden" });
  await alan.waitForFunction(() => /Grace Hopper took another call/.test(document.getElementById("notice").textContent));
  assert.ok(await grace.locator("#waiting").isHidden());
  // Media flows in the new call both ways.
  const before = [await inbound(ada, "audio"), await inbound(grace, "audio")];
  await ada.waitForTimeout(1500);
  const later = [await inbound(ada, "audio"), await inbound(grace, "audio")];
  assert.ok(later[0] > before[0] && later[1] > before[1], `media both ways: ${before} → ${later}`);
  const switched = await grace.evaluate(async (id) => {
    const { state } = window.ringline;
    const response = await fetch(`/api/calls/${id}/`, { headers: { Authorization: `Bearer ${state.token}` } });
    return response.json();
  }, first);
  assert.equal(switched.status, "ended");
  assert.equal(switched.end_reason, "switched_call");
  await hangUp(ada, grace);
  await Promise.all([grace.context().close(), alan.context().close(), ada.context().close()]);
});
