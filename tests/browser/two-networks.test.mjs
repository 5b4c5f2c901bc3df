// A call between two networks that cannot reach each other: two network namespaces made here
// (`ip netns`, a veth pair each), with no route between them, each holding one headless
// Chromium; a third holds Ringline and coturn, reachable from both at 10.201.0.1 (coturn's
// relays at 10.201.0.2, reachable from neither), and does not forward between the two. No
// candidate of one side can reach the other directly; the call must go relay to relay through
// coturn, and does: media flows both ways over a relay/relay pair on both sides.
// Needs root (CI runs as root); on a machine that cannot make namespaces it fails, saying so.
//
// Environment: as harness.mjs.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  binary,
  chromiumPath,
  inboundBytes,
  launchChromium,
  selectedPair,
  signedInTab,
  waitConnected,
  writeCoturnConfig,
} from "./harness.mjs";

const TURN_SECRET = "coturn-secret-for-the-two-networks-test";
const HUB = "10.201.0.1";
// coturn's relay addresses: on the hub only, routed from neither side, so neither browser can
// reach the other's relay from its own address: the only way through is relay to relay.
const RELAY = "10.201.0.2";
const PORT = 8000;
const TURN_PORT = 3478;
// Names unique to this run: several runs on one machine do not collide.
const tag = `rl${process.pid % 100000}`;
const ns = { a: `${tag}a`, b: `${tag}b`, hub: `${tag}h` };

let workdir;
const children = [];
const browsers = [];

function ip(...args) {
  const result = spawnSync("ip", args, { encoding: "utf8" });
  if (result.status !== 0) {
    throw new Error(`ip ${args.join(" ")} failed (the test needs root and ip netns): ${result.stderr || result.error}`);
  }
}

/** Namespaces a and b, each wired to the hub by a veth pair; the hub's 10.201.0.1 is routed
 * from both, and nothing else: a and b have no route to each other. */
function makeNetworks() {
  for (const name of Object.values(ns)) ip("netns", "add", name);
  for (const [side, subnet] of [["a", 1], ["b", 2]]) {
    const outer = `${tag}${side}0`;
    const inner = `${tag}${side}1`;
    ip("link", "add", outer, "type", "veth", "peer", "name", inner);
    ip("link", "set", outer, "netns", ns[side]);
    ip("link", "set", inner, "netns", ns.hub);
    ip("-n", ns[side], "addr", "add", `10.201.${subnet}.2/24`, "dev", outer);
    ip("-n", ns.hub, "addr", "add", `10.201.${subnet}.1/24`, "dev", inner);
    ip("-n", ns[side], "link", "set", outer, "up");
    ip("-n", ns.hub, "link", "set", inner, "up");
    ip("-n", ns[side], "link", "set", "lo", "up");
    ip("-n", ns[side], "route", "add", `${HUB}/32`, "via", `10.201.${subnet}.1`);
  }
  ip("-n", ns.hub, "link", "set", "lo", "up");
  ip("-n", ns.hub, "addr", "add", `${HUB}/32`, "dev", "lo");
  ip("-n", ns.hub, "addr", "add", `${RELAY}/32`, "dev", "lo");
  // A new namespace does not forward: a and b stay apart even through the hub.
  const forwarding = spawnSync("ip", ["netns", "exec", ns.hub, "sysctl", "-n", "net.ipv4.ip_forward"], { encoding: "utf8" });
  assert.equal(forwarding.stdout.trim(), "0", "the hub must not route between the two networks");
}

function removeNetworks() {
  for (const name of Object.values(ns)) spawnSync("ip", ["netns", "del", name]);
}

/** Starts `command` inside namespace `name`. */
function inNamespace(name, command, args, env = process.env) {
  const child = spawn("ip", ["netns", "exec", name, command, ...args], { env, stdio: ["ignore", "ignore", "inherit"] });
  children.push(child);
  return child;
}

function answers(url) {
  return spawnSync("ip", ["netns", "exec", ns.hub, "curl", "-sf", "-o", "/dev/null", url]).status === 0;
}

async function waitFor(what, ready) {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (ready()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not start`);
}

/** Chromium started inside namespace `name` (a wrapper in its place). */
function chromiumIn(name) {
  const wrapper = join(workdir, `chromium-${name}.sh`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${name} ${chromiumPath} "$@"\n`);
  chmodSync(wrapper, 0o755);
  // Camera and microphone exist only in a secure context: the page is plain http on an
  // address that is not loopback, as no real deployment would serve it.
  const origin = `http://${HUB}:${PORT}`;
  return launchChromium({ executablePath: wrapper, extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${origin}`] });
}

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "ringline-browser-netns-"));
  removeNetworks();
  makeNetworks();
  const config = writeCoturnConfig({
    workdir,
    secret: TURN_SECRET,
    listeningIp: HUB,
    relayIp: RELAY,
    port: TURN_PORT,
    relayPorts: [49160, 49200],
  });
  inNamespace(ns.hub, "turnserver", ["-c", config]);
  const env = {
    ...process.env,
    RINGLINE_DATABASE_URL: `sqlite://${join(workdir, "ringline.db")}?mode=rwc`,
    RINGLINE_BIND: `${HUB}:${PORT}`,
    RINGLINE_TURN_URLS: `turn:${HUB}:${TURN_PORT}?transport=udp,turn:${HUB}:${TURN_PORT}?transport=tcp`,
    RINGLINE_TURN_SECRET: TURN_SECRET,
    RUST_LOG: "warn",
  };
  for (const name of ["RINGLINE_BIN", "RINGLINE_SCREENSHOTS_DIR", "RINGLINE_JWT_SECRET", "RINGLINE_ENV"]) delete env[name];
  inNamespace(ns.hub, binary, ["demo"], env);
  await waitFor("ringline", () => answers(`http://${HUB}:${PORT}/healthz`));
  browsers.push(await chromiumIn(ns.a), await chromiumIn(ns.b));
});

after(async () => {
  for (const browser of browsers) await browser.close().catch(() => {});
  for (const child of children) child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 300));
  removeNetworks();
  rmSync(workdir, { recursive: true, force: true });
});

test("two networks with no route between them talk through coturn's relay", async () => {
  const base = `http://${HUB}:${PORT}`;
  const ada = await signedInTab(browsers[0], base, "ada");
  const grace = await signedInTab(browsers[1], base, "grace");
  await ada.locator('#contacts li[data-user="grace"] .call-video').click();
  await grace.locator("#incoming").waitFor();
  await grace.locator("#accept").click();
  await Promise.all([waitConnected(ada, 40_000), waitConnected(grace, 40_000)]);
  for (const [page, who] of [[grace, "grace"], [ada, "ada"]]) {
    const before = await inboundBytes(page);
    await new Promise((r) => setTimeout(r, 1500));
    assert.ok((await inboundBytes(page)) > before, `${who} receives media`);
  }
  assert.deepEqual(await selectedPair(ada), ["relay", "relay"]);
  assert.deepEqual(await selectedPair(grace), ["relay", "relay"]);
  await ada.locator("#hang-up").click();
});
