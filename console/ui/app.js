// keyturn console web UI: plain DOM, no framework, no build step.
// Everything a host sends is untrusted: it is rendered as text only, control characters made visible.

const TOKEN_KEY = "keyturn.token";
/** A link offered in chat, kept in this tab while its person signs in. */
const CHAT_LINK_KEY = "keyturn.chatLink";
const POLL_MS = 1000;
const PAGE = 100;

const $ = (id) => document.getElementById(id);

/** An API refusal: `code` is stable, `message` is for people. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API: a Bearer token from this tab, or the session cookie; JSON in and out. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { "X-Requested-With": "keyturn" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(response.status, "internal", `HTTP ${response.status}: not JSON`);
  }
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(response.status, error.code ?? "internal", error.message ?? `HTTP ${response.status}`);
  }
  return { status: response.status, data };
}

// ---- Rendering untrusted text -------------------------------------------------------

/** Control, bidirectional and invisible characters, shown as escapes rather than acted on. */
const HIDDEN =
  /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;
const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t", "\u001b": "\\e" };

/** `text` as nodes: plain text, each hidden character as a marked escape. */
function visible(text) {
  const fragment = document.createDocumentFragment();
  const value = String(text ?? "");
  let last = 0;
  for (const match of value.matchAll(HIDDEN)) {
    fragment.append(value.slice(last, match.index));
    const c = match[0];
    const mark = el("span", { className: "ctl", title: `U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}` });
    mark.textContent = NAMED[c] ?? `\\u{${c.codePointAt(0).toString(16)}}`;
    fragment.append(mark);
    last = match.index + c.length;
  }
  fragment.append(value.slice(last));
  return fragment;
}

/** A new element with properties and children (strings become visible text). */
function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(typeof child === "string" ? visible(child) : child);
  return node;
}

/** argv, each argument boxed so that boundaries and spaces inside one are plain. */
function argvNode(argv) {
  const span = el("span", { className: "argv" });
  (argv ?? []).forEach((arg, i) => {
    if (i) span.append(" ");
    span.append(el("span", { className: "arg" }, arg));
  });
  return span;
}

/** The action of a hold in one line: its command line, or where it connects. */
function what(hold) {
  if (hold.exec) return argvNode(hold.exec.argv?.length ? hold.exec.argv : [hold.exec.path]);
  if (hold.egress) return el("span", { className: "mono" }, destination(hold.egress));
  return el("span", {}, "—");
}

function destination(egress) {
  const address = egress.address?.includes(":") ? `[${egress.address}]` : egress.address;
  const shown = egress.domain ? `${egress.domain} (${address ?? "?"})` : address ?? "?";
  return `${egress.protocol ?? ""} ${shown}:${egress.port ?? "?"}`.trim();
}

/** A span of milliseconds for people: 45s, 3m 05s, 2h 10m, 3d 4h. */
function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function timestamp(ms) {
  return new Date(ms).toLocaleString();
}

function holdHref(id) {
  return `#/hold/${encodeURIComponent(id)}`;
}

function showError(node, error) {
  node.replaceChildren(visible(error instanceof ApiError ? `${error.code}: ${error.message}` : String(error)));
  node.hidden = false;
}

// ---- Signing in ------------------------------------------------------------------

let me = null;

async function signedIn() {
  try {
    me = (await api("/api/me")).data;
  } catch (error) {
    if (error.code !== "unauthenticated") throw error;
    me = null;
  }
  $("who").hidden = $("nav").hidden = !me;
  if (me) {
    $("who-person").replaceChildren(visible(me.display_name || me.person));
    $("who-person").title = me.person;
    $("who-role").textContent = me.role;
  }
  return me;
}

async function showSignIn(message) {
  show("signin");
  try {
    $("oidc").hidden = !(await api("/auth/options")).data.oidc;
  } catch {
    $("oidc").hidden = true;
  }
  if (message) showError($("notice"), message);
  $("token-input").focus();
}

$("oidc-signin").addEventListener("click", () => location.assign("/auth/login"));

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  $("notice").hidden = true;
  try {
    if (await signedIn()) return route();
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn("unauthenticated: unknown or revoked API token");
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    showError($("notice"), error);
  }
});

/** The secret of a one-time sign-in link (`/#login=…`), taken out of the address bar (and
 * so out of the history) before anything else happens. */
function takeLinkSecret() {
  const match = location.hash.match(/^#login=(.+)$/);
  if (!match) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return match[1];
}

/** The secret of a link offered in chat (`/#chat-link=…`), taken out of the address bar
 * and kept in this tab (session storage) through signing in. */
function takeChatLinkSecret() {
  const match = location.hash.match(/^#chat-link=([0-9a-f]{64})$/);
  if (!match) return;
  history.replaceState(null, "", location.pathname + location.search);
  sessionStorage.setItem(CHAT_LINK_KEY, match[1]);
}

/** Shows what the address asks for, first redeeming a sign-in link it carries (on load,
 * or pasted into the address bar of an open page). */
async function navigate() {
  takeChatLinkSecret();
  const secret = takeLinkSecret();
  if (secret === null) return route();
  try {
    await api("/auth/link", { method: "POST", body: { secret } });
    // The session the link opened is who this tab is now, not a token from before.
    sessionStorage.removeItem(TOKEN_KEY);
  } catch (error) {
    if (!(await signedIn().catch(() => null))) return showSignIn(error);
    await route();
    return showError($("notice"), error);
  }
  route();
}

$("sign-out").addEventListener("click", async () => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  if (!token) await api("/auth/logout", { method: "POST" }).catch(() => {});
  me = null;
  clearInterval(queueTimer);
  queueTimer = null;
  $("who").hidden = $("nav").hidden = true;
  location.hash = "";
  showSignIn();
});

// ---- Views and routing ----------------------------------------------------------

const VIEWS = ["signin", "pending", "hold", "history", "audit", "chatlink"];
/** The open hold's poll; the pending queue's own runs on every view, for its count. */
let timer = null;
let queueTimer = null;

function show(view) {
  clearInterval(timer);
  timer = null;
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("#nav a")) {
    const current = link.getAttribute("href") === `#/${view}`;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Opens hold `id` when its row is clicked anywhere but on its link. */
function linkRow(row, id) {
  row.dataset.holdId = id;
  row.addEventListener("click", (event) => {
    if (!event.target.closest("a")) location.hash = holdHref(id);
  });
  return row;
}

async function route() {
  $("notice").hidden = true;
  if (!me && !(await signedIn())) return showSignIn();
  if (!queueTimer) {
    loadPending();
    queueTimer = setInterval(loadPending, POLL_MS);
  }
  const chatLink = sessionStorage.getItem(CHAT_LINK_KEY);
  if (chatLink) return openChatLink(chatLink);
  const [, view, arg] = location.hash.match(/^#\/([a-z]+)\/?(.*)$/) ?? [];
  if (view === "hold" && arg) return openHold(decodeURIComponent(arg));
  if (view === "history") return openHistory();
  if (view === "audit") return openAudit();
  show("pending");
}

window.addEventListener("hashchange", navigate);

/** A failed load: sign in again when the session or token is gone; else say so. */
function failed(error) {
  if (error.code === "unauthenticated") {
    clearInterval(queueTimer);
    queueTimer = null;
    me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("who").hidden = $("nav").hidden = true;
    return showSignIn(error);
  }
  showError($("notice"), error);
}

// ---- A chat account's link -------------------------------------------------------

/** Shows the link offered in chat for its person to confirm: the account, who it links to. */
async function openChatLink(secret) {
  show("chatlink");
  for (const id of ["chatlink-error", "chatlink-offer", "chatlink-done"]) $(id).hidden = true;
  try {
    const { data } = await api("/api/chat-link-offers/read", { method: "POST", body: { secret } });
    $("chatlink-account").replaceChildren(visible(`${data.chat} ${data.team}/${data.user}`));
    $("chatlink-name").replaceChildren(visible(data.name || "(none given)"));
    $("chatlink-person").replaceChildren(visible(`${data.display_name} (${data.person})`));
    $("chatlink-role").replaceChildren(visible(data.role));
    $("chatlink-offer").hidden = false;
    armConfirm();
  } catch (error) {
    if (error.code === "unauthenticated") return failed(error);
    sessionStorage.removeItem(CHAT_LINK_KEY);
    showError($("chatlink-error"), error);
  }
}

/** How long the confirmation stays disabled once shown, and after the window comes back:
 * a click meant for another page (a double-click a hostile page asked for, as it brought
 * this one up) lands on nothing. */
const CONFIRM_PAUSE_MS = 1000;
let confirmTimer;

function armConfirm() {
  const button = $("chatlink-confirm");
  button.disabled = true;
  clearTimeout(confirmTimer);
  confirmTimer = setTimeout(() => { button.disabled = false; }, CONFIRM_PAUSE_MS);
}

window.addEventListener("blur", () => {
  clearTimeout(confirmTimer);
  $("chatlink-confirm").disabled = true;
});
window.addEventListener("focus", () => {
  if (!$("chatlink-offer").hidden) armConfirm();
});

$("chatlink-confirm").addEventListener("click", async () => {
  const secret = sessionStorage.getItem(CHAT_LINK_KEY);
  sessionStorage.removeItem(CHAT_LINK_KEY);
  $("chatlink-offer").hidden = true;
  try {
    const { data } = await api("/api/chat-link-offers/confirm", { method: "POST", body: { secret } });
    $("chatlink-done").replaceChildren(
      visible(`Linked: ${data.account} now approves and denies as ${data.person} (${data.role}); the chat channel is told.`),
    );
    $("chatlink-done").hidden = false;
  } catch (error) {
    showError($("chatlink-error"), error);
  }
});

$("chatlink-cancel").addEventListener("click", () => {
  sessionStorage.removeItem(CHAT_LINK_KEY);
  location.hash = "#/pending";
});

// ---- Pending queue ---------------------------------------------------------------

const seen = { host: new Set(), agent: new Set() };

/** Adds newly seen values to a filter's choices, keeping the current one. */
function remember(kind, values) {
  const select = $(`pending-${kind}`);
  let added = false;
  for (const value of values) {
    if (seen[kind].has(value)) continue;
    seen[kind].add(value);
    added = true;
  }
  if (!added) return;
  const current = select.value;
  const options = [...seen[kind]].sort().map((value) => el("option", { value }, value));
  select.replaceChildren(el("option", { value: "" }, "all"), ...options);
  select.value = current;
}

async function loadPending() {
  const params = new URLSearchParams({ status: "pending", limit: String(PAGE) });
  for (const kind of ["host", "agent"]) {
    const value = $(`pending-${kind}`).value;
    if (value) params.set(kind, value);
  }
  const updated = $("pending-updated");
  let data;
  try {
    ({ data } = await api(`/api/holds?${params}`));
  } catch (error) {
    if (error.code === "unauthenticated") return failed(error);
    updated.className = "error";
    return showError(updated, error);
  }
  remember("host", data.holds.map((h) => h.host));
  remember("agent", data.holds.map((h) => h.agent));
  const rows = data.holds.map((hold) => {
    const left = hold.deadline_ms - data.now_ms;
    const row = el(
      "tr",
      {},
      el("td", {}, hold.kind),
      el("td", {}, el("a", { href: holdHref(hold.id) }, hold.agent || "—")),
      el("td", {}, hold.host),
      el("td", { className: "what" }, what(hold)),
      el("td", { className: "rule" }, hold.rule ?? ""),
      el("td", { className: "num" }, duration(data.now_ms - hold.requested_at_ms)),
      el("td", { className: left < 60_000 ? "num urgent" : "num" }, duration(left)),
    );
    row.dataset.testid = "hold-row";
    return linkRow(row, hold.id);
  });
  $("pending-rows").replaceChildren(...rows);
  $("pending-empty").hidden = rows.length > 0;
  $("pending-count").textContent = rows.length ? String(rows.length) : "";
  updated.className = "hint";
  updated.textContent = `updated ${new Date(data.now_ms).toLocaleTimeString()}`;
}

for (const kind of ["host", "agent"]) $(`pending-${kind}`).addEventListener("change", loadPending);
$("pending-filters").addEventListener("submit", (event) => event.preventDefault());

// ---- One hold ------------------------------------------------------------------

let current = null;

function fact(term, ...value) {
  return [el("dt", {}, term), el("dd", {}, ...value)];
}

function renderHold(hold, nowMs) {
  $("hold-id").replaceChildren(visible(hold.id));
  $("hold-status").textContent = hold.status;
  $("hold-status").className = `status ${hold.status}`;
  const facts = [
    ...fact("Kind", hold.kind),
    ...fact("Agent", hold.agent ?? ""),
    ...fact("Host", hold.host),
  ];
  if (hold.exec) {
    const argv = argvNode(hold.exec.argv);
    argv.dataset.testid = "hold-argv";
    facts.push(
      ...fact("Command line", argv),
      ...fact("Executable", el("span", { className: "mono" }, hold.exec.path ?? "")),
      ...fact("SHA-256", el("span", { className: "mono hash" }, hold.exec.sha256 ?? "")),
      ...fact("Working directory", el("span", { className: "mono" }, hold.exec.cwd ?? "")),
    );
  }
  if (hold.egress) {
    const dest = el("span", { className: "mono" }, destination(hold.egress));
    dest.dataset.testid = "hold-destination";
    facts.push(...fact("Destination", dest));
  }
  const rule = el("span", { className: "mono" }, hold.rule ?? "");
  rule.dataset.testid = "hold-rule";
  const left = hold.deadline_ms - nowMs;
  facts.push(
    ...fact("User", `${hold.user ?? "?"} (uid ${hold.uid ?? "?"})`),
    ...fact("PID", String(hold.pid ?? "?")),
    ...fact("Cgroup", el("span", { className: "mono" }, hold.cgroup ?? "")),
    ...fact("Policy", hold.policy ?? ""),
    ...fact("Rule", rule),
    ...fact("Requester", hold.requester || "—"),
    ...fact("Approvals", `${hold.approvals} of ${hold.quorum}${hold.approvers?.length ? ": " + hold.approvers.join(", ") : ""}`),
    ...fact("Requested", `${timestamp(hold.requested_at_ms)} (waited ${duration(nowMs - hold.requested_at_ms)})`),
  );
  if (hold.status === "pending") {
    const node = el("span", { className: left < 60_000 ? "urgent" : "" }, duration(left));
    node.dataset.testid = "hold-left";
    facts.push(...fact("Time left", node));
  }
  if (hold.decision) {
    const d = hold.decision;
    const scope = d.verdict === "approve" ? ` (${d.scope === "for" ? `for ${duration(d.duration_secs * 1000)}` : d.scope})` : "";
    const decision = el("span", {}, `${d.verdict}${scope} by ${d.by} at ${timestamp(d.at_ms)}${d.reason ? ` — ${d.reason}` : ""}`);
    decision.dataset.testid = "hold-decision";
    facts.push(...fact("Decision", decision));
  }
  if (hold.closed_reason) facts.push(...fact("Closed", hold.closed_reason));
  $("hold-facts").replaceChildren(...facts);
  const parents = (hold.exec?.parents ?? []).map((p) =>
    el("tr", {}, el("td", { className: "num" }, String(p.pid)), el("td", {}, p.comm ?? ""), el("td", {}, argvNode(p.argv))),
  );
  $("hold-parents").replaceChildren(...parents);
  $("parents-title").hidden = $("hold-parents").parentElement.hidden = parents.length === 0;
  $("decide").hidden = hold.status !== "pending";
  $("decide-role").hidden = me?.role !== "viewer";
}

async function loadHold() {
  const id = current;
  try {
    const { data } = await api(`/api/holds/${encodeURIComponent(id)}`);
    if (id === current) renderHold(data.hold, data.now_ms);
  } catch (error) {
    failed(error);
  }
}

function openHold(id) {
  show("hold");
  if (id !== current) {
    current = id;
    $("hold-facts").replaceChildren();
    $("decide").reset();
    $("decide").hidden = true;
    $("decide-error").hidden = $("decide-result").hidden = true;
  }
  loadHold();
  timer = setInterval(loadHold, POLL_MS);
}

async function decide(verdict) {
  const form = $("decide");
  const reason = $("reason").value.trim();
  const body = {};
  if (reason) body.reason = reason;
  if (verdict === "approve") {
    body.scope = form.elements.scope.value;
    if (body.scope === "for") body.duration_secs = Math.round(Number($("duration").value) * Number($("duration-unit").value));
  }
  $("decide-error").hidden = $("decide-result").hidden = true;
  for (const button of form.querySelectorAll("button")) button.disabled = true;
  try {
    const { status, data } = await api(`/api/holds/${encodeURIComponent(current)}/${verdict}`, { method: "POST", body });
    $("decide-result").textContent =
      status === 202 ? `Approval recorded: ${data.approvals} of ${data.quorum} needed.` : `Hold ${data.status}.`;
    $("decide-result").hidden = false;
    $("decide-result").dataset.status = data.status;
    await loadHold();
  } catch (error) {
    showError($("decide-error"), error);
    $("decide-error").dataset.code = error.code ?? "";
  } finally {
    for (const button of form.querySelectorAll("button")) button.disabled = false;
  }
}

$("approve").addEventListener("click", () => decide("approve"));
$("deny").addEventListener("click", () => decide("deny"));
$("decide").addEventListener("submit", (event) => event.preventDefault());

// ---- History -------------------------------------------------------------------

let historyBefore = 0;

async function loadHistory(more) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const status = $("history-status").value;
  if (status) params.set("status", status);
  for (const kind of ["host", "agent"]) {
    const value = $(`history-${kind}`).value.trim();
    if (value) params.set(kind, value);
  }
  if (more && historyBefore) params.set("before_ms", String(historyBefore));
  let data;
  try {
    ({ data } = await api(`/api/holds?${params}`));
  } catch (error) {
    return failed(error);
  }
  const rows = data.holds
    .filter((hold) => hold.status !== "pending")
    .map((hold) => {
      const row = el(
        "tr",
        {},
        el("td", {}, hold.kind),
        el("td", {}, el("a", { href: holdHref(hold.id) }, hold.agent || "—")),
        el("td", {}, hold.host),
        el("td", { className: "what" }, what(hold)),
        el("td", {}, el("span", { className: `status ${hold.status}` }, hold.status)),
        el("td", {}, hold.decision?.by ?? ""),
        el("td", {}, timestamp(hold.requested_at_ms)),
      );
      row.dataset.testid = "history-row";
      return linkRow(row, hold.id);
    });
  fillPage("history", rows, data.holds.length, more);
  historyBefore = data.holds.at(-1)?.requested_at_ms ?? 0;
}

/** Shows `rows` in table `NAME-rows` (after those there, for the next page), and the
 * `NAME-more` button while a full page of `fetched` came back. */
function fillPage(name, rows, fetched, more) {
  if (more) $(`${name}-rows`).append(...rows);
  else $(`${name}-rows`).replaceChildren(...rows);
  $(`${name}-more`).hidden = fetched < PAGE;
}

function openHistory() {
  show("history");
  loadHistory(false);
}

$("history-filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadHistory(false);
});
$("history-status").addEventListener("change", () => loadHistory(false));
$("history-more").addEventListener("click", () => loadHistory(true));

// ---- Audit -----------------------------------------------------------------------

let auditBefore = 0;

/** An audit event's fields other than its type, as `key=value` text. */
function eventDetails(event) {
  return Object.entries(event)
    .filter(([key]) => key !== "type")
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join("  ");
}

async function loadAudit(more) {
  const params = new URLSearchParams({ limit: String(PAGE) });
  const q = $("audit-q").value.trim();
  if (q) params.set("q", q);
  if (more && auditBefore) params.set("before_seq", String(auditBefore));
  let data;
  try {
    ({ data } = await api(`/api/audit?${params}`));
  } catch (error) {
    return failed(error);
  }
  $("notice").hidden = true;
  const rows = data.records.map((record) => {
    const row = el(
      "tr",
      { title: `hash ${record.hash}` },
      el("td", { className: "num" }, String(record.seq)),
      el("td", {}, timestamp(record.at_ms)),
      el("td", {}, String(record.event?.type ?? "")),
      el("td", { className: "details" }, eventDetails(record.event ?? {})),
    );
    row.dataset.testid = "audit-row";
    return row;
  });
  fillPage("audit", rows, data.records.length, more);
  auditBefore = data.records.at(-1)?.seq ?? 0;
}

/** Each host's trail as the console anchored it; a trail cut or rewritten after an anchor is named. */
async function loadHostTrails() {
  const rows = $("host-trails");
  try {
    const { data } = await api("/api/hosts/trails");
    rows.replaceChildren(...data.hosts.map((trail) => {
      const findings = el("td");
      findings.dataset.testid = "trail-findings";
      if (!trail.findings.length) findings.append("none");
      for (const finding of trail.findings) findings.append(el("div", {}, `${timestamp(finding.at_ms)}: ${finding.detail}`));
      const latest = trail.latest ? `${trail.latest.records} records at ${timestamp(trail.latest.at_ms)}` : "none yet";
      return el("tr", { className: trail.findings.length ? "error" : "" }, el("td", {}, trail.host), el("td", {}, latest), findings);
    }));
  } catch (error) {
    const cell = el("td", { colSpan: 3 });
    showError(cell, error);
    rows.replaceChildren(el("tr", {}, cell));
  }
}

function openAudit() {
  show("audit");
  loadAudit(false);
  loadHostTrails();
}

$("audit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadAudit(false);
});
$("audit-more").addEventListener("click", () => loadAudit(true));
$("audit-verify").addEventListener("click", async () => {
  const verdict = $("audit-verdict");
  verdict.hidden = false;
  verdict.textContent = "Verifying…";
  try {
    const { data } = await api("/api/audit/verify");
    verdict.className = "ok";
    verdict.textContent = `Chain intact: ${data.records} records, last hash ${data.hash}.`;
  } catch (error) {
    verdict.className = "error";
    showError(verdict, error);
  }
});

navigate();
