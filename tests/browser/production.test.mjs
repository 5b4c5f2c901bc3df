// The web client as a production server serves it (`ringline serve`, demo sign-in off): the
// page explains how to sign in, asks the demo endpoints nothing, shows the signed-in user's
// name from the directory, not the id the token carries, and lists as contacts the people the
// directory says the user shares a conversation with.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { binary, freePort, launchChromium, waitForServer } from "./harness.mjs";

const secret = "production-browser-test-secret-0123456789abcdef";
let server;
let base;
let browser;
let workdir;
let token;

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "ringline-browser-"));
  const port = await freePort();
  const env = { ...process.env, RUST_LOG: "warn" };
  for (const name of Object.keys(env)) if (name.startsWith("RINGLINE_")) delete env[name];
  Object.assign(env, {
    RINGLINE_DATABASE_URL: `sqlite://${join(workdir, "ringline.db")}?mode=rwc`,
    RINGLINE_BIND: `127.0.0.1:${port}`,
    RINGLINE_JWT_SECRET: secret,
  });
  const cli = (...args) => execFileSync(binary, args, { env, cwd: workdir, encoding: "utf8" }).trim();
  cli("users", "add", "42", "--username", "grace", "--first-name", "Grace", "--last-name", "Hopper");
  cli("users", "add", "43", "--username", "alan", "--first-name", "Alan", "--last-name", "Turing");
  cli("users", "add", "44", "--username", "ada", "--first-name", "Ada", "--last-name", "Lovelace");
  cli("users", "add", "45", "--username", "stranger", "--first-name", "Not", "--last-name", "Shared");
  cli("conversations", "add", "1", "--participants", "42,43");
  cli("conversations", "add", "2", "--participants", "44,42,43");
  cli("conversations", "add", "3", "--participants", "43,45");
  token = cli("token", "--user", "42").split("\n").pop();
  server = spawn(binary, ["serve"], { cwd: workdir, env, stdio: ["ignore", "inherit", "inherit"] });
  base = `http://127.0.0.1:${port}`;
  await waitForServer(base);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
});

test("with demo sign-in off the page explains sign-in, asks no demo endpoint, names the user and lists their contacts", async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  const requested = [];
  page.on("request", (request) => requested.push(new URL(request.url()).pathname));
  await page.goto(base);
  await page.locator("#token-form").waitFor();
  assert.ok(await page.locator("#token-help").isVisible(), "how to sign in is explained");
  assert.match(await page.locator("#token-help").textContent(), /access token/);
  assert.ok(await page.locator("#demo").isHidden(), "no demo users");

  await page.locator("#token-input").fill(token);
  await page.locator("#token-form button[type=submit]").click();
  await page.locator("#home").waitFor();
  await page.waitForFunction(() => document.getElementById("connection").textContent === "online");
  assert.equal(await page.locator("#me-name").textContent(), "Grace Hopper", "the directory's name, not the id");
  assert.deepEqual(requested.filter((path) => path.startsWith("/api/demo/")), [], "no demo endpoint was asked");
  // With no call history yet, the contacts are the people Grace shares a conversation with,
  // from the directory, and nobody else.
  await page.locator("#contacts li").first().waitFor();
  const contacts = await page.locator("#contacts li").evaluateAll((items) => items.map((item) => item.dataset.user));
  assert.deepEqual(contacts, ["44", "43"], "Ada and Alan, by username; not the stranger");
  assert.ok(await page.getByRole("button", { name: "Video call Ada Lovelace" }).isVisible());
  await context.close();
});
