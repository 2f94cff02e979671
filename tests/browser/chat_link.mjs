// Drives the console's web UI in Debian's headless Chromium through a link offered to a chat
// account: open it signed out, sign in through the identity provider, read the confirmation,
// confirm, then open the same link again to see it refused. Prints what it saw as JSON lines.
//
//   node chat_link.mjs --url URL --secret SECRET --login NAME --password SECRET
//
// Exits 0 only if every step showed what it should; otherwise saves a screenshot in the
// temp dir and exits 1.

import { parseArgs } from "node:util";
import { drive, say, signInWithProvider } from "./common.mjs";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    secret: { type: "string" },
    login: { type: "string" },
    password: { type: "string" },
  },
});
if (!opts.url || !opts.secret || !opts.login || !opts.password) {
  console.error("usage: chat_link.mjs --url URL --secret SECRET --login L --password P");
  process.exit(2);
}

async function run(page) {
  await page.goto(`${opts.url}#chat-link=${opts.secret}`);
  await page.getByTestId("oidc-signin").waitFor();
  say("opened", { address: page.url() });
  await signInWithProvider(page, opts.url, opts.login, opts.password);
  const offer = page.getByTestId("chatlink-offer");
  await offer.waitFor();
  say("offer", {
    account: (await page.getByTestId("chatlink-account").textContent()).trim(),
    person: (await page.getByTestId("chatlink-person").textContent()).trim(),
    warning: (await offer.innerText()).includes("Confirm only if this is your own chat account"),
    address: page.url(),
  });
  await page.getByTestId("chatlink-confirm").click();
  const done = page.getByTestId("chatlink-done");
  await done.waitFor();
  say("linked", { text: (await done.textContent()).trim() });

  await page.goto("about:blank");
  await page.goto(`${opts.url}#chat-link=${opts.secret}`);
  const error = page.getByTestId("chatlink-error");
  await error.waitFor();
  say("refused", { text: (await error.textContent()).trim() });
}

await drive(run);
