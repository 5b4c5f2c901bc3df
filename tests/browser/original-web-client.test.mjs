// The original app's web client against Ringline, in real browsers: a stand-in written from
// reading its code (fixtures/original-web-client.html says which habits it keeps), with both
// sockets open on both sides, as on the chat page, which is where the original places calls.
// Served at the server's own origin through Playwright's routing, so its REST calls are
// same-origin as they are in production.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, launchChromium, startRingline } from "./harness.mjs";

const fixture = readFileSync(join(import.meta.dirname, "fixtures/original-web-client.html"), "utf8");
const CONVERSATION = 1; // the demo users' shared conversation
const TEST_TIMEOUT = 90_000; // a hung page fails its test instead of the whole run

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

async function tokenFor(user) {
  const response = await fetch(`${base}/api/demo/token/`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: user }),
  });
  assert.equal(response.status, 200);
  return (await response.json()).token;
}

/** A tab of the original client signed in as `user`, on the chat page unless told otherwise. */
async function originalTab(user, { context, chatPage = true } = {}) {
  const ctx = context || (await browser.newContext());
  const page = await ctx.newPage();
  page.on("pageerror", (error) => console.error(`[${user}] page error:`, error));
  await page.route(`${base}/original-web-client`, (route) =>
    route.fulfill({ status: 200, contentType: "text/html", body: fixture }),
  );
  await page.goto(`${base}/original-web-client`);
  const token = await tokenFor(user);
  await page.evaluate(
    (options) => window.client.start(options),
    { token, userId: user, chatConversation: chatPage ? CONVERSATION : null },
  );
  return page;
}

const clientState = (page, key) => page.evaluate((name) => window.client.state[name], key);

async function until(page, predicate, what, timeout = 15_000) {
  try {
    await page.waitForFunction(predicate, null, { timeout, polling: 50 });
  } catch (error) {
    const log = await clientState(page, "log");
    throw new Error(`${what} never happened; events seen: ${JSON.stringify(log)}`, { cause: error });
  }
}

async function assertNoFailures(...pages) {
  for (const page of pages) {
    assert.deepEqual(await clientState(page, "failures"), [], "the peer never threw");
  }
}

async function callStatus(page, id) {
  return page.evaluate(async (callId) => {
    const response = await fetch(`/api/calls/${callId}/`, {
      headers: { authorization: `Bearer ${window.client.state.token}` },
    });
    return (await response.json()).status;
  }, id);
}

for (const [callType, offerVia] of [
  ["video", "notifications"],
  ["voice", "notifications"],
  ["video", "chat"],
  ["voice", "chat"],
]) {
  test(`a ${callType} call from the chat page (offer on the ${offerVia} socket): media both ways, one answer, other tab stops, clean end`, { timeout: TEST_TIMEOUT }, async () => {
    const ada = await originalTab("ada");
    const graceContext = await browser.newContext();
    const grace = await originalTab("grace", { context: graceContext });
    const graceOtherTab = await originalTab("grace", { context: graceContext });

    const id = await ada.evaluate(([type, via]) => window.client.placeCall("grace", type, via), [callType, offerVia]);
    for (const tab of [grace, graceOtherTab]) {
      await until(tab, () => window.client.state.ringing && window.client.state.pendingOffer, "ringing with the offer");
    }
    await grace.evaluate(() => window.client.accept());

    await until(ada, () => window.client.state.pc?.connectionState === "connected", "Ada connected");
    await until(grace, () => window.client.state.pc?.connectionState === "connected", "Grace connected");
    await until(graceOtherTab, () => window.client.state.ringing === null, "Grace's other tab stopped ringing");
    assert.equal(await clientState(graceOtherTab, "pc"), null, "the other tab never joined");

    // Media flows both ways: inbound RTP bytes grow on each side.
    const before = [await ada.evaluate(() => window.client.inboundBytes()), await grace.evaluate(() => window.client.inboundBytes())];
    await ada.waitForTimeout(1500);
    const later = [await ada.evaluate(() => window.client.inboundBytes()), await grace.evaluate(() => window.client.inboundBytes())];
    assert.ok(later[0] > before[0], `Ada receives media (${before[0]} → ${later[0]} bytes)`);
    assert.ok(later[1] > before[1], `Grace receives media (${before[1]} → ${later[1]} bytes)`);
    // A late duplicate answer would have thrown by now.
    await assertNoFailures(ada, grace, graceOtherTab);
    assert.equal(await clientState(grace, "hungUpByRemote"), false, "the answering tab was never sent a call.end");
    assert.equal(await callStatus(ada, id), "active");

    await ada.evaluate(() => window.client.hangUp());
    await until(grace, () => window.client.state.inCall === null && window.client.state.pc === null, "Grace's side ended");
    assert.equal(await clientState(grace, "hungUpByRemote"), true);
    await assertNoFailures(ada, grace, graceOtherTab);
    assert.equal(await callStatus(grace, id), "ended");
    await ada.context().close();
    await graceContext.close();
  });
}

test("a decline keeps the caller's Call Declined screen for its two seconds", { timeout: TEST_TIMEOUT }, async () => {
  const alan = await originalTab("alan");
  const katherine = await originalTab("katherine");
  await alan.evaluate(() => window.client.placeCall("katherine", "voice"));
  await until(katherine, () => window.client.state.ringing, "Katherine rings");
  await katherine.evaluate(() => window.client.decline());
  await until(alan, () => window.client.state.declined, "Call Declined shows");
  await alan.waitForTimeout(1200);
  assert.equal(await clientState(alan, "declined"), true, "still showing after 1.2 s");
  assert.equal(await clientState(alan, "declinedWiped"), false, "no call.end wiped it");
  await until(alan, () => !window.client.state.declined && !window.client.state.outgoing, "the screen clears itself");
  await assertNoFailures(alan, katherine);
  await alan.context().close();
  await katherine.context().close();
});

test("leaving the chat page closes its socket with 1000, and it stays closed", { timeout: TEST_TIMEOUT }, async () => {
  const ada = await originalTab("ada");
  await ada.evaluate(() => window.client.leaveChatPage());
  await until(ada, () => window.client.state.chatCloseCodes.length > 0, "the chat socket closed");
  // The original hook would reconnect a second after any other code (1006 if unanswered).
  await ada.waitForTimeout(1500);
  assert.deepEqual(await clientState(ada, "chatCloseCodes"), [1000]);
  assert.equal(await clientState(ada, "chatReconnects"), 0);
  await ada.context().close();
});
