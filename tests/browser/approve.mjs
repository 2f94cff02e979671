// Drives the console's web UI in Debian's headless Chromium: sign in, find a held action in
// the pending queue, check its context, approve it once. Prints what it saw as JSON lines.
//
//   node approve.mjs --url URL --hold HOLD@HOST --token kt_… [--expect-argv TEXT]
//        [--expect-rule TEXT] [--reason TEXT] [--expect approved|<error code>]
//   (--expect-trail-finding TEXT: then the Audit view must list a host trail finding with TEXT;
//    --login NAME --password SECRET instead of --token: sign in through the identity provider;
//    --link SECRET: open the one-time sign-in link URL#login=SECRET, and after the approval
//    open it again, signed out, to see it refused)
//
// Exits 0 only if the UI shows the expected outcome; otherwise saves a screenshot in the
// temp dir and exits 1.

import { parseArgs } from "node:util";
import { drive, say, signInWithProvider } from "./common.mjs";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    hold: { type: "string" },
    token: { type: "string" },
    login: { type: "string" },
    link: { type: "string" },
    password: { type: "string" },
    "expect-argv": { type: "string" },
    "expect-rule": { type: "string" },
    "expect-trail-finding": { type: "string" },
    reason: { type: "string", default: "checked in the browser test" },
    expect: { type: "string", default: "approved" },
  },
});
if (!opts.url || !opts.hold || !(opts.token || opts.login || opts.link)) {
  console.error("usage: approve.mjs --url URL --hold HOLD@HOST (--token T | --login L --password P | --link S) …");
  process.exit(2);
}

/** Signs in with an API token on the console's own sign-in screen. */
async function signInWithToken(page, token) {
  await page.getByTestId("token-input").fill(token);
  await page.getByTestId("token-submit").click();
}

/** Opens the one-time sign-in link, signed out, as a new tab would: `URL#login=SECRET`. */
async function openLink(page, secret) {
  await page.context().clearCookies();
  await page.goto("about:blank");
  await page.goto(`${opts.url}#login=${secret}`);
}

async function run(page) {
  if (opts.link) await openLink(page, opts.link);
  else {
    await page.goto(opts.url);
    if (opts.token) await signInWithToken(page, opts.token);
    else await signInWithProvider(page, opts.url, opts.login, opts.password);
  }
  const who = page.getByTestId("whoami");
  await who.waitFor();
  say("signed_in", {
    whoami: (await who.textContent()).trim(),
    role: await page.getByTestId("whoami-role").textContent(),
    address: page.url(),
  });

  const row = page.locator(`[data-testid="hold-row"][data-hold-id=${JSON.stringify(opts.hold)}]`);
  await row.waitFor();
  say("queued", { id: opts.hold, row: (await row.innerText()).split("\t").map((cell) => cell.trim()) });
  await row.click();

  const argv = page.getByTestId("hold-argv");
  await argv.waitFor();
  const context = {
    argv: (await argv.textContent()).trim(),
    rule: (await page.getByTestId("hold-rule").textContent()).trim(),
    status: (await page.getByTestId("hold-status").textContent()).trim(),
    left: (await page.getByTestId("hold-left").textContent()).trim(),
  };
  say("context", context);
  const images = await page.locator("main img").count();
  if (images) throw new Error(`${images} <img> in the page: agent data was rendered as markup`);
  if (opts["expect-argv"] !== undefined && context.argv !== opts["expect-argv"]) {
    throw new Error(`command line ${JSON.stringify(context.argv)}, expected ${JSON.stringify(opts["expect-argv"])}`);
  }
  if (opts["expect-rule"] !== undefined && context.rule !== opts["expect-rule"]) {
    throw new Error(`rule ${JSON.stringify(context.rule)}, expected ${JSON.stringify(opts["expect-rule"])}`);
  }

  await page.getByTestId("scope-once").check();
  await page.getByTestId("reason").fill(opts.reason);
  await page.getByTestId("approve").click();
  const result = page.getByTestId("decide-result");
  const error = page.getByTestId("decide-error");
  await page.locator('[data-testid="decide-result"]:not([hidden]), [data-testid="decide-error"]:not([hidden])').waitFor();
  if (await error.isVisible()) {
    const code = await error.getAttribute("data-code");
    say("refused", { code, message: (await error.textContent()).trim() });
    if (code !== opts.expect) throw new Error(`refused with ${code}, expected ${opts.expect}`);
    return;
  }
  say("decided", { result: (await result.textContent()).trim() });
  if (opts.expect !== "approved") throw new Error(`approved, expected ${opts.expect}`);
  await page.locator('[data-testid="hold-status"]', { hasText: "approved" }).waitFor();
  say("shown", {
    status: (await page.getByTestId("hold-status").textContent()).trim(),
    decision: (await page.getByTestId("hold-decision").textContent()).trim(),
  });
  if (opts["expect-trail-finding"] !== undefined) {
    await page.getByTestId("nav-audit").click();
    const findings = page.getByTestId("trail-findings").filter({ hasText: opts["expect-trail-finding"] });
    await findings.first().waitFor();
    say("host_trails", { findings: (await findings.first().textContent()).trim() });
  }
  if (!opts.link) return;
  await openLink(page, opts.link);
  const notice = page.getByTestId("notice");
  await notice.waitFor();
  say("link_refused", {
    message: (await notice.textContent()).trim(),
    hint: (await page.getByTestId("signin-link-hint").textContent()).trim(),
    address: page.url(),
  });
}

await drive(run);
