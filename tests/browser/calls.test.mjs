// Two people calling each other through Ringline in a real browser: headless Debian Chromium
// with fake camera and microphone, driven by playwright-core, against the real `ringline demo`
// binary on 127.0.0.1. Run by .ci/run after `cargo test` (which builds the binary).
//
// Environment: RINGLINE_BIN (default ../../target/debug/ringline), CHROMIUM (default
// /usr/bin/chromium), RINGLINE_SCREENSHOTS_DIR (where screenshots go; default a temp dir).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import {
  chromiumPath,
  freePort,
  inboundBytes,
  launchChromium,
  notice,
  signedInTab,
  startRingline,
  stopRingline,
  waitConnected,
} from "./harness.mjs";

const screenshots = process.env.RINGLINE_SCREENSHOTS_DIR || mkdtempSync(join(tmpdir(), "ringline-shots-"));
const RING_TIMEOUT_SECS = 4;

let server;
let port;
let base;
let browser;
let workdir;

const startServer = () => startRingline({ workdir, port, ringTimeoutSecs: RING_TIMEOUT_SECS });
const stopServer = () => stopRingline(server);

before(async () => {
  mkdirSync(screenshots, { recursive: true });
  workdir = mkdtempSync(join(tmpdir(), "ringline-browser-"));
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = await startServer();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
  console.log(`screenshots in ${screenshots}`);
});

/** A signed-in tab for `user` (a fresh browser context is a fresh person). */
const personTab = (user, context) => signedInTab(browser, base, user, context);

const shot = (page, name) => page.screenshot({ path: join(screenshots, `${name}.png`) });

test("a video call: ring, accept, media both ways, hang up, history", async () => {
  const signInPage = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  await signInPage.goto(base);
  await signInPage.locator("#demo-users button").first().waitFor();
  await shot(signInPage, "sign-in");
  await signInPage.close();

  const ada = await personTab("ada");
  const grace = await personTab("grace");
  await shot(ada, "contacts");

  await ada.locator('#contacts li[data-user="grace"] .call-video').click();
  await ada.locator("#outgoing").waitFor();
  await grace.locator("#incoming").waitFor();
  assert.match(await grace.locator("#incoming-title").textContent(), /Incoming video call/);
  assert.match(await grace.locator("#incoming-from").textContent(), /Ada Lovelace is calling/);
  await shot(ada, "outgoing");
  await shot(grace, "incoming");

  // Each side reports the call's quality from getStats() soon after the media connects.
  const isReport = (response) => response.url().includes("/quality/") && response.request().method() === "POST";
  const adaReport = ada.waitForResponse(isReport, { timeout: 20000 });
  const graceReport = grace.waitForResponse(isReport, { timeout: 20000 });
  await grace.locator("#accept").click();
  await Promise.all([waitConnected(ada), waitConnected(grace)]);
  await ada.locator("#in-call").waitFor();
  await grace.locator("#in-call").waitFor();

  // Media really flows both ways: inbound RTP bytes grow on each side.
  const before = [await inboundBytes(ada), await inboundBytes(grace)];
  await ada.waitForTimeout(1500);
  const later = [await inboundBytes(ada), await inboundBytes(grace)];
  assert.ok(later[0] > before[0], `Ada receives media (${before[0]} → ${later[0]} bytes)`);
  assert.ok(later[1] > before[1], `Grace receives media (${before[1]} → ${later[1]} bytes)`);
  assert.match(await ada.locator("#call-state").textContent(), /Connected/);
  for (const [who, reported] of [["Ada", adaReport], ["Grace", graceReport]]) {
    const response = await reported;
    assert.equal(response.status(), 202, `${who}'s report is taken`);
    const report = response.request().postDataJSON();
    assert.equal(typeof report.rtt_ms, "number", `${who} reports a round trip: ${JSON.stringify(report)}`);
    assert.ok(["host", "srflx", "prflx", "relay"].includes(report.local_candidate_type), JSON.stringify(report));
    assert.equal(report.protocol, "udp");
    assert.equal(typeof report.setup_ms, "number", "the first report says how long the media took");
  }
  // The call record shows both parties' summaries.
  const record = await ada.evaluate(async () => {
    const { state } = window.ringline;
    const response = await fetch(`/api/calls/${state.call.id}/`, { headers: { Authorization: `Bearer ${state.token}` } });
    return response.json();
  });
  assert.ok(record.quality.caller.reports >= 1 && record.quality.receiver.reports >= 1, JSON.stringify(record.quality));
  assert.equal(typeof record.quality.mos, "number");
  assert.ok(await ada.locator("#poor-connection").isHidden(), "a loopback call is not a poor one");
  await grace.waitForFunction(() => document.getElementById("call-timer").textContent !== "00:00");
  await shot(grace, "in-call");

  // Mute and camera off flip the local tracks.
  await ada.locator("#mute").click();
  assert.equal(await ada.locator("#mute").getAttribute("aria-pressed"), "true");
  assert.equal(await ada.evaluate(() => window.ringline.state.localStream.getAudioTracks()[0].enabled), false);
  await ada.locator("#camera").click();
  assert.equal(await ada.evaluate(() => window.ringline.state.localStream.getVideoTracks()[0].enabled), false);
  // Grace sees who turned the camera off and that she is muted, not a black frame.
  await grace.waitForFunction(() => document.getElementById("in-call").classList.contains("peer-camera-off"));
  assert.ok(await grace.locator("#call-avatar").isVisible(), "the peer's initials stand in for the video");
  assert.equal(await grace.locator("#call-avatar").textContent(), "AL");
  assert.equal(await grace.locator("#remote-video").evaluate((video) => getComputedStyle(video).visibility), "hidden");
  assert.match(await grace.locator("#peer-media").textContent(), /muted, camera off/);
  await shot(grace, "peer-camera-off");
  await ada.locator("#camera").click();
  await grace.waitForFunction(() => !document.getElementById("in-call").classList.contains("peer-camera-off"));

  await ada.locator("#hang-up").click();
  await notice(grace, /Call ended/);
  await grace.locator("#in-call").waitFor({ state: "hidden" });
  await ada.locator("#in-call").waitFor({ state: "hidden" });
  const entry = grace.locator('#history li[data-status="ended"]').first();
  await entry.waitFor();
  assert.match(await entry.textContent(), /Incoming video call · \d\d:\d\d/);
  await ada.locator('#history li[data-status="ended"]').first().waitFor();
  await shot(grace, "history");
  await ada.context().close();
  await grace.context().close();
});

test("the callee declines and the caller is told", async () => {
  const alan = await personTab("alan");
  const katherine = await personTab("katherine");
  await alan.locator('#contacts li[data-user="katherine"] .call-voice').click();
  await katherine.locator("#incoming").waitFor();
  assert.match(await katherine.locator("#incoming-title").textContent(), /Incoming voice call/);
  await katherine.locator("#decline").click();
  await notice(alan, /declined/);
  await alan.locator("#outgoing").waitFor({ state: "hidden" });
  await katherine.locator("#incoming").waitFor({ state: "hidden" });
  await alan.locator('#history li[data-status="rejected"]').first().waitFor();
  // Candidates still trickling when the decline lands are not sent, so no refusal shows.
  assert.equal(await alan.locator("#notice.error").count(), 0, await alan.locator("#notice").textContent());
  await alan.context().close();
  await katherine.context().close();
});

test("a decline that overtakes the caller's own initiate response still reaches the caller", async () => {
  // Events and REST responses travel on different connections: hold Alan's initiate response
  // back until Katherine has declined, so the rejection reaches his socket first.
  const alan = await personTab("alan");
  const katherine = await personTab("katherine");
  let releaseResponse;
  const declined = new Promise((resolve) => (releaseResponse = resolve));
  await alan.route("**/api/calls/initiate/", async (route) => {
    const response = await route.fetch();
    await declined;
    await route.fulfill({ response });
  });
  await alan.locator('#contacts li[data-user="katherine"] .call-voice').click();
  await katherine.locator("#incoming").waitFor();
  await katherine.locator("#decline").click();
  await katherine.locator("#incoming").waitFor({ state: "hidden" });
  await katherine.locator('#history li[data-status="rejected"]').first().waitFor();
  releaseResponse();
  await notice(alan, /Katherine Johnson declined/);
  await alan.locator("#outgoing").waitFor({ state: "hidden" });
  const errors = await alan.locator("#notice.error").count();
  assert.equal(errors, 0, "no stale error about the offer");
  await alan.context().close();
  await katherine.context().close();
});

test("a double click on a call button places one call and keeps its media", async () => {
  const ada = await personTab("ada");
  const grace = await personTab("grace");
  await ada.locator('#contacts li[data-user="grace"] .call-video').dblclick();
  await ada.locator("#outgoing").waitFor();
  await grace.locator("#incoming").waitFor();
  await ada.waitForTimeout(500); // time for a second initiate request to come back, were there one
  assert.equal(await ada.locator("#notice.error").count(), 0, await ada.locator("#notice").textContent());
  const live = await ada.evaluate(() => window.ringline.state.localStream?.getTracks().every((t) => t.readyState === "live"));
  assert.equal(live, true, "the camera and microphone are still on");
  await grace.locator("#accept").click();
  await Promise.all([waitConnected(ada), waitConnected(grace)]);
  await ada.locator("#hang-up").click();
  await notice(grace, /Call ended/);
  await ada.context().close();
  await grace.context().close();
});

test("nobody answers: both see a missed call after the ring timeout", async () => {
  const ada = await personTab("ada");
  const alan = await personTab("alan");
  await ada.locator('#contacts li[data-user="alan"] .call-video').click();
  await alan.locator("#incoming").waitFor();
  await notice(ada, /did not answer/);
  await notice(alan, /Missed call from Ada/);
  await alan.locator("#incoming").waitFor({ state: "hidden" });
  const missed = alan.locator('#history li[data-status="missed"].missed').first();
  await missed.waitFor();
  assert.match(await missed.textContent(), /Missed video call/);
  await shot(alan, "missed");
  await ada.context().close();
  await alan.context().close();
});

test("do not disturb: nothing rings, the missed call shows, and its caller can be blocked", async () => {
  const katherine = await personTab("katherine");
  const grace = await personTab("grace");
  await katherine.locator("#call-settings summary").click();
  await katherine.locator("#do-not-disturb").check();
  await notice(katherine, /Do not disturb is on/);
  // Whether the incoming-call screen ever shows, however briefly.
  await katherine.evaluate(() => {
    window.rang = false;
    const incoming = document.getElementById("incoming");
    new MutationObserver(() => {
      if (!incoming.hidden) window.rang = true;
    }).observe(incoming, { attributes: true });
  });
  await grace.locator('#contacts li[data-user="katherine"] .call-voice').click();
  // To the caller it rang as any call nobody answers.
  await notice(grace, /did not answer/);
  const missed = katherine.locator('#history li[data-status="missed"].missed').first();
  await missed.waitFor();
  assert.match(await missed.textContent(), /Missed voice call/);
  assert.equal(await katherine.evaluate(() => window.rang), false, "nothing rang");
  await shot(katherine, "do-not-disturb-missed");

  await missed.locator(".block").click();
  await notice(katherine, /Grace Hopper is blocked/);
  await katherine.locator('#blocked li[data-user="grace"]').waitFor();
  await grace.locator('#contacts li[data-user="katherine"] .call-voice').click();
  await notice(grace, /does not take calls from you/);
  await shot(katherine, "call-settings");

  // As it was, for the tests after this one.
  await katherine.locator('#blocked li[data-user="grace"] button').click();
  await katherine.locator('#blocked li[data-user="grace"]').waitFor({ state: "detached" });
  await katherine.locator("#do-not-disturb").uncheck();
  await notice(katherine, /Call settings saved/);
  await katherine.context().close();
  await grace.context().close();
});

test("open in two tabs: both ring, answering in one stops the other", async () => {
  const grace = await personTab("grace");
  const katherineContext = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const firstTab = await personTab("katherine", katherineContext);
  const secondTab = await personTab("katherine", katherineContext);

  await grace.locator('#contacts li[data-user="katherine"] .call-video').click();
  await firstTab.locator("#incoming").waitFor();
  await secondTab.locator("#incoming").waitFor();
  await secondTab.locator("#accept").click();
  await notice(firstTab, /Answered on another device/);
  await firstTab.locator("#incoming").waitFor({ state: "hidden" });
  assert.equal(await firstTab.evaluate(() => window.ringline.state.ringer), null, "the first tab stopped ringing");
  await Promise.all([waitConnected(grace), waitConnected(secondTab)]);
  await secondTab.locator("#hang-up").click();
  await notice(grace, /Call ended/);
  await grace.context().close();
  await katherineContext.close();
});

test("after a server restart the tabs reconnect by themselves and calls ring again", async () => {
  const ada = await personTab("ada");
  const grace = await personTab("grace");
  await stopServer();
  await ada.waitForFunction(() => document.getElementById("connection").textContent === "Reconnecting…");
  server = await startServer();
  // The client retries with backoff (1 s, 2 s, 4 s, …): no reload, no new sign-in.
  for (const page of [ada, grace]) {
    await page.waitForFunction(() => document.getElementById("connection").textContent === "online", null, {
      timeout: 30_000,
    });
  }
  await ada.locator('#contacts li[data-user="grace"] .call-voice').click();
  await grace.locator("#incoming").waitFor();
  await grace.locator("#decline").click();
  await notice(ada, /declined/);
  await ada.context().close();
  await grace.context().close();
});

test("a phone-sized screen keeps every control reachable", async () => {
  const context = await browser.newContext({ viewport: { width: 375, height: 700 }, isMobile: true, hasTouch: true });
  const ada = await personTab("ada", context);
  const grace = await personTab("grace");
  await grace.locator('#contacts li[data-user="ada"] .call-video').click();
  await ada.locator("#incoming").waitFor();
  for (const id of ["accept", "decline"]) {
    const box = await ada.locator(`#${id}`).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 375 && box.height >= 44, `#${id} fits and is tappable`);
  }
  await shot(ada, "incoming-phone");
  await ada.locator("#decline").click();
  await notice(grace, /declined/);
  await context.close();
  await grace.context().close();
});

test("denied camera and microphone: a clear message, and no call is placed", async () => {
  // A browser whose permission prompts nobody accepts (no --use-fake-ui-for-media-stream).
  const strict = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--disable-background-networking"],
  });
  try {
    const context = await strict.newContext({ viewport: { width: 1000, height: 700 } });
    const ada = await personTab("ada", context);
    await ada.locator('#contacts li[data-user="katherine"] .call-video').click();
    await notice(ada, /denied/);
    assert.equal(await ada.locator("#outgoing").isHidden(), true);
    assert.match(await ada.locator("#notice").getAttribute("class"), /error/);
    const ringing = await ada.evaluate(async () => {
      const response = await fetch("/api/calls/?user_id=katherine", {
        headers: { authorization: `Bearer ${window.ringline.state.token}` },
      });
      return (await response.json()).results.filter((call) => call.status === "ringing").length;
    });
    assert.equal(ringing, 0, "nothing rang: media is checked before the call is placed");
  } finally {
    await strict.close();
  }
});

test("the page has an icon, and a notice fits a phone's screen", async () => {
  const page = await browser.newPage({ viewport: { width: 360, height: 640 } });
  const failed = [];
  page.on("response", (response) => response.status() >= 400 && failed.push(`${response.status()} ${response.url()}`));
  await page.goto(base);
  const icon = await page.evaluate(async () => {
    const href = document.querySelector('link[rel="icon"]')?.href;
    const [linked, conventional] = await Promise.all([fetch(href), fetch("/favicon.ico")]);
    return { href, linked: linked.status, type: linked.headers.get("content-type"), conventional: conventional.status };
  });
  assert.deepEqual(
    { linked: icon.linked, type: icon.type, conventional: icon.conventional },
    { linked: 200, type: "image/svg+xml", conventional: 200 },
    JSON.stringify(icon),
  );
  assert.deepEqual(failed, [], "no request of the page load failed");
  // A long notice (an unbroken token-like word) stays inside the screen and the column.
  await page.locator("#token-input").fill(`not-a-token-${"x".repeat(200)}`);
  await page.locator("#token-form button").click();
  await notice(page, /not valid/);
  await page.evaluate(() => {
    document.getElementById("notice").textContent = `Could not sign in: ${"y".repeat(300)}`;
  });
  const box = await page.locator("#notice").boundingBox();
  const column = await page.locator("main > section:not([hidden])").boundingBox();
  assert.ok(box.x >= 0 && box.x + box.width <= 360, `inside the screen: ${JSON.stringify(box)}`);
  assert.ok(box.width <= column.width + 0.5, `no wider than the column (${box.width} > ${column.width})`);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(wide <= 360, `nothing runs off the page (${wide}px wide)`);
  await page.close();
});
