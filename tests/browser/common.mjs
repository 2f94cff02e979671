// What the browser tests share: Debian's headless Chromium driven by playwright-core, each
// step printed as a JSON line, a screenshot in the temp dir when a step fails.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const TIMEOUT_MS = 15_000;

/** Prints one step of the run, as a JSON line. */
export const say = (step, fields = {}) => console.log(JSON.stringify({ step, ...fields }));

/** Signs in through the identity provider's login form, which sends the browser back to `origin`. */
export async function signInWithProvider(page, origin, login, password) {
  await page.getByTestId("oidc-signin").click();
  await page.locator('input[name="login"]').fill(login);
  await page.locator('input[name="password"]').fill(password);
  await page.locator('[type="submit"]').click();
  await page.waitForURL((url) => url.origin === new URL(origin).origin);
}

/** Runs `run(page)` in a fresh browser profile and exits: 0 only if it finished and the
 * page raised no error and opened no dialog. */
export async function drive(run) {
  const profile = mkdtempSync(join(tmpdir(), "keyturn-chromium-"));
  let context;
  let code = 1;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium",
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    context.setDefaultTimeout(TIMEOUT_MS);
    const page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (error) => {
      pageErrors.push(error.message);
      say("page_error", { message: error.message });
    });
    page.on("dialog", (dialog) => {
      pageErrors.push(`dialog: ${dialog.message()}`);
      dialog.dismiss();
    });
    page.on("console", (message) => {
      if (message.type() === "error") say("console_error", { text: message.text() });
    });
    try {
      await run(page);
      if (pageErrors.length) throw new Error(`the page failed: ${pageErrors.join("; ")}`);
      code = 0;
    } catch (error) {
      const screenshot = join(tmpdir(), `keyturn-ui-failure-${process.pid}.png`);
      await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
      say("failed", { error: String(error?.message ?? error), screenshot });
    }
  } catch (error) {
    say("failed", { error: String(error?.message ?? error) });
  } finally {
    await context?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}
