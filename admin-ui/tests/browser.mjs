// Browser tests of the admin pages: Debian's chromium driven by playwright-core against a real
// federation (`switchyard demo`). An operator logs in, adds a user, watches a call placed with
// `switchyard endpoint call` appear live and end, and revokes an endpoint; a viewer's attempt to
// change something is refused by the API; the main pages are reached with the keyboard alone.
// A screenshot of each page goes to $SCREENSHOT_DIR.
//
// Environment: SWITCHYARD_BIN (the binary), SCREENSHOT_DIR (made if missing), CHROMIUM (default
// /usr/bin/chromium). Run by provider/tests/admin_ui.rs; exit 0 when every check passed.

import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const bin = process.env.SWITCHYARD_BIN;
assert.ok(bin, "SWITCHYARD_BIN names the switchyard binary");
const shots = process.env.SCREENSHOT_DIR ?? mkdtempSync(join(tmpdir(), "switchyard-shots-"));
mkdirSync(shots, { recursive: true });
const work = mkdtempSync(join(tmpdir(), "switchyard-browser-"));
const children = [];
/** Pages open, shot again when a check fails. */
const pages = [];

function step(text) {
  console.log(`== ${text}`);
}

/** Starts a switchyard command; resolves with it once its output holds `ready` (if given). */
function start(args, ready, timeoutMs = 30_000) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  child.output = "";
  child.stdout.on("data", (chunk) => (child.output += chunk));
  child.stderr.on("data", (chunk) => (child.output += chunk));
  if (!ready) return Promise.resolve(child);
  return waitFor(child, ready, timeoutMs).then(() => child);
}

function waitFor(child, text, timeoutMs = 30_000) {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(
      () => reject(new Error(`no "${text}" within ${timeoutMs} ms from ${child.spawnargs.join(" ")}:\n${child.output}`)),
      timeoutMs,
    );
    const check = () => {
      if (child.output.includes(text)) {
        clearTimeout(deadline);
        resolve();
      } else if (child.exitCode !== null) {
        clearTimeout(deadline);
        reject(new Error(`${child.spawnargs.join(" ")} exited (${child.exitCode}) before "${text}":\n${child.output}`));
      } else {
        setTimeout(check, 50);
      }
    };
    check();
  });
}

function run(args, input) {
  return execFileSync(bin, args, { input, encoding: "utf8", timeout: 60_000 });
}

/** The demo's printed command that starts with `switchyard START` and ends with END. */
function printedCommand(printed, startWith, endWith) {
  const line = printed
    .split("\n")
    .map((l) => l.trim())
    .find((l) => l.startsWith(`switchyard ${startWith}`) && l.endsWith(endWith));
  assert.ok(line, `no "switchyard ${startWith} … ${endWith}" in:\n${printed}`);
  return line.split(/\s+/).slice(1);
}

async function main() {
  step("a federation: switchyard demo");
  const demo = await start(
    [
      "demo",
      "--endpoint-listen", "127.0.0.1:0",
      "--admin-listen", "127.0.0.1:0",
      "--federation-listen", "127.0.0.1:0",
      "--directory-listen", "127.0.0.1:0",
      "--sip-listen", "127.0.0.1:0",
    ],
    "Press Ctrl-C to stop",
  );
  const admin = demo.output.match(/admin API +: (http:\/\/[0-9.:]+) +\(Authorization: Bearer (\S+)\)/);
  assert.ok(admin, `no admin API in:\n${demo.output}`);
  const [, adminUrl, token] = admin;
  // `=`: a token may start with `-`.
  const cli = ["--admin-url", adminUrl, `--admin-token=${token}`];
  run(["admin", "add", "ops", "--role", "operator", "--password-file", "-", ...cli], "operator password 1\n");
  run(["admin", "add", "watcher", "--role", "viewer", "--password-file", "-", ...cli], "viewer password 22\n");

  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const operator = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    operator.on("page", (p) => pages.push(p));
    const page = await operator.newPage();
    const login = async (p, name, password) => {
      await p.goto(`${adminUrl}/admin/`);
      await p.getByLabel("Name").fill(name);
      await p.getByLabel("Password").fill(password);
      await p.getByRole("button", { name: "Log in" }).click();
      await p.getByRole("heading", { name: "Dashboard" }).waitFor();
    };

    step("log in");
    await page.goto(`${adminUrl}/admin/`);
    await page.getByRole("heading", { name: "Log in" }).waitFor();
    await page.screenshot({ path: join(shots, "login.png"), fullPage: true });
    await page.getByLabel("Name").fill("ops");
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByText("wrong operator name or password").waitFor();
    await login(page, "ops", "operator password 1");
    await page.getByText("ops (operator)", { exact: true }).waitFor();
    await page.getByText("users", { exact: true }).waitFor();
    await page.screenshot({ path: join(shots, "dashboard.png"), fullPage: true });

    step("add a user");
    await page.getByRole("link", { name: "Users" }).click();
    await page.getByRole("heading", { name: "Users and endpoints" }).waitFor();
    const addForm = page.getByRole("form", { name: "Add a user" });
    await addForm.getByLabel("Name").fill("Erin Example");
    await addForm.getByLabel(/URIs/).fill("tel:+16502530077 mailto:erin@demo.example");
    await addForm.getByRole("button", { name: "Add user" }).click();
    await page.getByRole("cell", { name: "Erin Example" }).waitFor();
    await page.getByRole("cell", { name: "mailto:erin@demo.example tel:+16502530077" }).waitFor();

    step("import users from CSV");
    const importForm = page.getByRole("form", { name: "Import users from CSV" });
    await importForm.getByLabel(/CSV file/).setInputFiles({
      name: "users.csv",
      mimeType: "text/csv",
      buffer: Buffer.from("display_name,uris\nFrank,tel:+16502530079\nGrace,mailto:grace@demo.example\n"),
    });
    await importForm.getByRole("button", { name: "Import" }).click();
    await page.getByText("Import finished.").waitFor();
    await page.getByRole("cell", { name: "Frank", exact: true }).waitFor();
    await page.getByRole("cell", { name: "Grace", exact: true }).waitFor();
    await page.screenshot({ path: join(shots, "users.png"), fullPage: true });

    step("a call appears live, then ends");
    for (const device of ["/alice-1", "/bob-1"]) {
      run(printedCommand(demo.output, "endpoint register", device));
    }
    const answerArgs = printedCommand(demo.output, "endpoint answer", "--auto-accept");
    const answerer = await start([...answerArgs, "--once"], "waiting for calls");
    await page.getByRole("link", { name: "Calls" }).click();
    await page.getByRole("heading", { name: "In progress (live)" }).waitFor();
    await page.getByText("No call in progress.").waitFor();
    const callArgs = printedCommand(demo.output, "endpoint call", "/alice-1");
    const caller = await start([...callArgs, "--hangup-after", "5"]);
    const live = page.locator("#live-calls");
    await live.getByRole("cell", { name: "answered" }).waitFor({ timeout: 15_000 });
    await live.getByRole("cell", { name: callArgs[2] }).waitFor();
    await page.screenshot({ path: join(shots, "calls-live.png"), fullPage: true });
    // Meanwhile the caller's media holds an allocation at provider A's relay.
    const relayPage = await operator.newPage();
    await relayPage.goto(`${adminUrl}/admin/#/relay`);
    await relayPage.getByRole("heading", { name: "Allocations" }).waitFor();
    await relayPage.locator("#relay-allocations").getByRole("row").nth(1).waitFor();
    await relayPage.getByText(/kbit\/s now/).waitFor();
    await relayPage.waitForTimeout(2500);
    await relayPage.screenshot({ path: join(shots, "relay.png"), fullPage: true });
    await relayPage.close();
    await waitFor(caller, "hung up", 20_000);
    await live.getByText("No call in progress.").waitFor({ timeout: 10_000 });
    await waitFor(answerer, "ended", 10_000);
    await page.reload();
    await page.getByRole("heading", { name: "History" }).waitFor();
    await page.getByRole("cell", { name: "ended" }).first().waitFor();
    const filters = page.getByRole("form", { name: "Filter the history" });
    await filters.getByLabel("State").selectOption("rejected");
    await filters.getByRole("button", { name: "Filter" }).click();
    await page.getByText("No call matches.").waitFor();
    await filters.getByLabel("State").selectOption("ended");
    await filters.getByLabel("Caller or callee contains").fill("BOB@demo");
    await filters.getByRole("button", { name: "Filter" }).click();
    await page.getByRole("cell", { name: callArgs[2] }).first().waitFor();
    await page.screenshot({ path: join(shots, "calls-history.png"), fullPage: true });
    const csv = await page.evaluate(async () => (await fetch("/admin/v1/calls.csv")).text());
    assert.match(csv, /^session_id,from,to,/);
    assert.match(csv, /,ended,/);

    step("revoke an endpoint");
    await page.getByRole("link", { name: "Users" }).click();
    const alice = page.getByRole("row").filter({ hasText: "Alice" });
    await alice.getByRole("button", { name: "Endpoints" }).click();
    // The device `endpoint register` made (its name is the CLI's), not the SIP gateway.
    const revoke = page.getByRole("button", { name: "Revoke switchyard-cli" });
    await revoke.click();
    await page.getByText("Endpoint switchyard-cli revoked.").waitFor();
    await revoke.waitFor({ state: "detached" });
    await page.screenshot({ path: join(shots, "endpoints.png"), fullPage: true });

    step("federation");
    await page.getByRole("link", { name: "Federation" }).click();
    await page.getByRole("heading", { name: "Peers" }).waitFor();
    await page.getByText(/Discovery dictionary of/).waitFor();
    await page.screenshot({ path: join(shots, "federation.png"), fullPage: true });

    step("settings");
    await page.getByRole("link", { name: "Settings" }).click();
    await page.getByRole("cell", { name: "database.url" }).waitFor();
    await page.getByRole("cell", { name: "admin.listen" }).waitFor();
    await page.screenshot({ path: join(shots, "settings.png"), fullPage: true });

    step("audit log");
    await page.getByRole("link", { name: "Audit log" }).click();
    const audit = page.getByRole("row").filter({ hasText: "/admin/v1/users" }).filter({ hasText: "POST" });
    await audit.filter({ hasText: "ops" }).first().waitFor();
    await page.screenshot({ path: join(shots, "audit.png"), fullPage: true });

    step("a viewer is refused");
    const viewerContext = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const viewer = await viewerContext.newPage();
    pages.push(viewer);
    await login(viewer, "watcher", "viewer password 22");
    await viewer.getByRole("link", { name: "Users" }).click();
    await viewer.getByText("Read-only: you are a viewer.").waitFor();
    assert.equal(await viewer.getByRole("button", { name: "Add user" }).isDisabled(), true);
    await viewer.screenshot({ path: join(shots, "users-viewer.png"), fullPage: true });
    const refused = await viewer.evaluate(async () => {
      const me = await (await fetch("/admin/v1/session")).json();
      const response = await fetch("/admin/v1/users", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": me.csrf_token },
        body: JSON.stringify({ display_name: "Mallory", uris: ["tel:+16502530078"] }),
      });
      return { status: response.status, body: await response.json() };
    });
    assert.deepEqual([refused.status, refused.body.error], [403, "read-only"]);
    const users = await viewer.evaluate(async () => (await fetch("/admin/v1/users?q=Mallory")).json());
    assert.equal(users.users.length, 0, "nothing was added");

    step("keyboard only");
    const keys = await operator.newPage();
    await keys.goto(`${adminUrl}/admin/#/dashboard`);
    await keys.getByRole("heading", { name: "Dashboard" }).waitFor();
    await keys.keyboard.press("Tab");
    assert.equal(await keys.evaluate(() => document.activeElement.textContent), "Skip to content");
    for (const [link, heading] of [
      ["Users", "Users and endpoints"],
      ["Calls", "Calls"],
      ["Federation", "Federation"],
      ["Relay", "Relay"],
      ["Audit log", "Audit log"],
      ["Settings", "Settings"],
      ["Dashboard", "Dashboard"],
    ]) {
      // From the page (where Enter left the focus), back up to the navigation.
      let focused = "";
      for (let presses = 0; presses < 12 && focused !== link; presses++) {
        await keys.keyboard.press("Shift+Tab");
        focused = await keys.evaluate(() => document.activeElement?.textContent ?? "");
      }
      assert.equal(focused, link, `Tab reaches the ${link} link`);
      await keys.keyboard.press("Enter");
      await keys.getByRole("heading", { name: heading, exact: true }).waitFor();
      assert.equal(await keys.evaluate(() => document.activeElement.id), "main", "focus moves to the page");
    }
    await keys.getByRole("link", { name: "Dashboard" }).focus();
    const outline = await keys.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, "none", "the focused link shows it");
  } catch (e) {
    for (const [i, p] of pages.entries()) {
      await p.screenshot({ path: join(shots, `failure-${i}.png`), fullPage: true }).catch(() => {});
    }
    throw e;
  } finally {
    await browser.close();
  }
  console.log(`screenshots in ${shots}`);
}

let failed = false;
try {
  await main();
  console.log("all browser checks passed");
} catch (e) {
  failed = true;
  console.error(e.stack ?? e);
} finally {
  for (const child of children) {
    if (child.exitCode === null) child.kill("SIGTERM");
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
