// The operators' pages: a small single-page app over the admin API (docs/protocol.md, "Admin
// API"). Pages are built as DOM nodes, never from HTML strings, so names and URIs from the
// database cannot inject markup. Changes carry the session's CSRF token; the API itself refuses
// what a viewer may not do.

const state = { me: null, live: null };
const main = document.getElementById("main");

/** An element with attributes (`on…` functions become listeners) and children. */
function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "rect", "polyline", "text", "title", "g", "line"].includes(tag);
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, kind = "ok") {
  const status = document.getElementById("status");
  status.replaceChildren(h("p", { class: kind }, text));
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error;
  }
}

/** Calls the admin API; JSON in and out. A lost session leads back to the login page. */
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.me?.csrf_token) headers["X-CSRF-Token"] = state.me.csrf_token;
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (response.status === 401 && path !== "/admin/v1/session") {
    state.me = null;
    render();
  }
  if (!response.ok) throw new ApiError(response.status, value);
  return value;
}

const canChange = () => state.me?.role === "operator";

/** Runs a change and reports it; refusals (a viewer, bad input) are shown, not thrown. */
async function change(what, action) {
  try {
    const result = await action();
    say(what);
    return result;
  } catch (e) {
    say(`${e.message}${e.code ? ` (${e.code})` : ""}`, "error");
    return null;
  }
}

/** A UTC time from ms since the epoch; beyond what a date can hold (an endpoint whose
 * certificate never expires, such as a SIP gateway's) reads "never". */
function time(ms) {
  if (ms === null || ms === undefined) return "";
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? "never" : date.toISOString().replace("T", " ").slice(0, 19);
}

function tableRow(cells) {
  return h("tr", {}, cells.map((c) => h("td", {}, c)));
}

function table(columns, rows) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map(tableRow)),
  );
}

function readonlyNote() {
  return canChange() ? null : h("p", { class: "readonly" }, "Read-only: you are a viewer.");
}

// ---- login ----

function loginPage() {
  const form = h(
    "form",
    {
      "aria-label": "Log in",
      onsubmit: async (event) => {
        event.preventDefault();
        const data = new FormData(form);
        try {
          state.me = await api("POST", "/admin/v1/session", {
            name: data.get("name"),
            password: data.get("password"),
          });
          say(`Logged in as ${state.me.name} (${state.me.role}).`);
          if (!location.hash) location.hash = "#/dashboard";
          render();
        } catch (e) {
          say(e.message, "error");
        }
      },
    },
    h("label", {}, "Name", h("input", { name: "name", autocomplete: "username", required: true })),
    h(
      "label",
      {},
      "Password",
      h("input", { name: "password", type: "password", autocomplete: "current-password", required: true }),
    ),
    h("button", { type: "submit", class: "primary" }, "Log in"),
  );
  return [h("h1", {}, "Log in"), form];
}

// ---- dashboard ----

/** Calls per minute as bars, setup latency p50 and p95 as lines (right-hand scale). */
function callChart(minutes) {
  const width = 640, height = 200, left = 36, right = 44, top = 10, bottom = 24;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const maxCalls = Math.max(1, ...minutes.map((m) => m.calls));
  const maxSetup = Math.max(1, ...minutes.flatMap((m) => [m.setup_p95_ms ?? 0, m.setup_p50_ms ?? 0]));
  const step = plotWidth / Math.max(1, minutes.length);
  const x = (i) => left + i * step;
  const yCalls = (n) => top + plotHeight - (n / maxCalls) * plotHeight;
  const ySetup = (ms) => top + plotHeight - (ms / maxSetup) * plotHeight;
  const line = (key) =>
    minutes
      .map((m, i) => (m[key] === null ? null : `${x(i) + step / 2},${ySetup(m[key])}`))
      .filter(Boolean)
      .join(" ");
  const total = minutes.reduce((sum, m) => sum + m.calls, 0);
  return h(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Calls per minute over the last hour (${total} in all), with setup latency`,
    },
    h("title", {}, "Calls per minute, setup latency p50 and p95"),
    minutes.map((m, i) =>
      h("rect", {
        class: "bar",
        x: x(i) + 1,
        y: yCalls(m.calls),
        width: Math.max(1, step - 2),
        height: top + plotHeight - yCalls(m.calls),
      }),
    ),
    h("polyline", { class: "p50", points: line("setup_p50_ms") }),
    h("polyline", { class: "p95", points: line("setup_p95_ms") }),
    h("text", { x: 2, y: top + 8 }, `${maxCalls}/min`),
    h("text", { x: width - right + 4, y: top + 8 }, `${maxSetup} ms`),
    h("text", { x: left, y: height - 6 }, "60 min ago"),
    h("text", { x: width - right - 24, y: height - 6 }, "now"),
  );
}

async function dashboardPage() {
  const d = await api("GET", "/admin/v1/dashboard");
  const card = (figure, label) =>
    h("div", { class: "card" }, h("div", { class: "figure" }, figure), h("div", { class: "label" }, label));
  const peers = d.peers ? `${d.peers.up} up, ${d.peers.down} down` : "no federation";
  return [
    h("h1", {}, "Dashboard"),
    h(
      "div",
      { class: "cards" },
      card(d.ready ? "ready" : "NOT READY", "health"),
      card(d.users, "users"),
      card(d.active_endpoints, "endpoints"),
      card(d.calls_now, "calls now"),
      card(peers, "peers"),
    ),
    h("h2", {}, "Calls and setup latency, last hour"),
    callChart(d.minutes),
    h("p", {}, "Bars: calls started per minute. Lines: setup latency of answered calls, p50 (green) and p95 (red)."),
    h("h2", {}, "Certificates"),
    table(
      ["certificate", "expires", "days left"],
      d.certificates.map((c) => [
        c.name,
        time(c.not_after),
        h("span", { class: c.warning ? "warning" : "" }, c.warning ? `${c.days_left} (renew soon)` : c.days_left),
      ]),
    ),
  ];
}

// ---- users ----

async function importCsv(file, progress) {
  const total = Math.max(1, (await file.text()).split("\n").filter((l) => l.trim()).length - 1);
  progress.max = total;
  progress.value = 0;
  const response = await fetch("/admin/v1/import", {
    method: "POST",
    headers: { "Content-Type": "text/csv", "X-CSRF-Token": state.me.csrf_token },
    credentials: "same-origin",
    body: file,
  });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    throw new ApiError(response.status, body);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let outcome = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines.filter((l) => l.trim())) {
      const event = JSON.parse(line);
      if (event.progress) progress.value = event.progress.rows;
      if (event.done || event.failed) outcome = event;
    }
  }
  if (outcome?.failed) {
    const first = outcome.failed.errors?.[0];
    throw new Error(`${outcome.failed.message}${first ? `: line ${first.line}: ${first.message}` : ""}`);
  }
  progress.value = total;
  return outcome?.done;
}

async function endpointsPanel(user, panel) {
  const { endpoints } = await api("GET", `/admin/v1/users/${encodeURIComponent(user.id)}/endpoints`);
  panel.replaceChildren(
    h("h2", {}, `Endpoints of ${user.display_name || user.id}`),
    endpoints.length === 0
      ? h("p", {}, "No endpoint yet.")
      : table(
          ["name", "certificate SHA-256", "valid until", "revoked", ""],
          endpoints.map((e) => [
            e.name,
            h("code", { title: e.certificate_sha256 ?? "" }, (e.certificate_sha256 ?? "").slice(0, 20)),
            time(e.certificate_not_after),
            time(e.revoked_at),
            e.revoked_at
              ? ""
              : e.certificate_sha256?.startsWith("sip-gateway:")
              ? "SIP gateway: ends with its SIP account"
              : h(
                  "button",
                  {
                    type: "button",
                    disabled: !canChange(),
                    onclick: async () => {
                      if (await change(`Endpoint ${e.name} revoked.`, () => api("POST", `/admin/v1/endpoints/${encodeURIComponent(e.id)}/revoke`))) {
                        await endpointsPanel(user, panel);
                      }
                    },
                  },
                  `Revoke ${e.name}`,
                ),
          ]),
        ),
  );
}

async function usersPage() {
  const query = new URLSearchParams(location.hash.split("?")[1] ?? "").get("q") ?? "";
  const list = await api("GET", `/admin/v1/users?limit=100${query ? `&q=${encodeURIComponent(query)}` : ""}`);
  const panel = h("section", { "aria-live": "polite" });
  const search = h(
    "form",
    {
      role: "search",
      onsubmit: (event) => {
        event.preventDefault();
        const q = new FormData(search).get("q");
        location.hash = q ? `#/users?q=${encodeURIComponent(q)}` : "#/users";
      },
    },
    h("label", {}, "Search names and URIs", h("input", { name: "q", type: "search", value: query })),
    h("button", { type: "submit" }, "Search"),
  );
  const add = h(
    "form",
    {
      "aria-label": "Add a user",
      onsubmit: async (event) => {
        event.preventDefault();
        const data = new FormData(add);
        const uris = String(data.get("uris")).split(/[\s,]+/).filter(Boolean);
        const user = await change("User added.", () =>
          api("POST", "/admin/v1/users", { display_name: data.get("name"), uris }),
        );
        if (user) render();
      },
    },
    h("label", {}, "Name", h("input", { name: "name", required: true })),
    h("label", {}, "URIs (tel: or mailto:, space-separated)", h("input", { name: "uris", required: true, size: 40 })),
    h("button", { type: "submit", class: "primary", disabled: !canChange() }, "Add user"),
  );
  const progress = h("progress", { value: 0, max: 1, "aria-label": "Import progress" });
  const importForm = h(
    "form",
    {
      "aria-label": "Import users from CSV",
      onsubmit: async (event) => {
        event.preventDefault();
        const file = new FormData(importForm).get("csv");
        const done = await change("Import finished.", () => importCsv(file, progress));
        if (done) render();
      },
    },
    h("label", {}, "CSV file (display_name, uris)", h("input", { name: "csv", type: "file", accept: ".csv,text/csv", required: true })),
    h("button", { type: "submit", disabled: !canChange() }, "Import"),
    progress,
  );
  const rows = list.users.map((u) => [
    u.display_name,
    u.uris.join(" "),
    u.active_endpoints,
    h(
      "span",
      {},
      h(
        "button",
        {
          type: "button",
          onclick: () => endpointsPanel(u, panel).catch((e) => say(e.message, "error")),
        },
        "Endpoints",
      ),
      " ",
      h(
        "button",
        {
          type: "button",
          disabled: !canChange(),
          onclick: async () => {
            const code = await change("Provisioning code issued.", () =>
              api("POST", `/admin/v1/users/${encodeURIComponent(u.id)}/provisioning-codes`),
            );
            if (code) panel.replaceChildren(h("h2", {}, `Provisioning code for ${u.display_name}`), h("p", {}, h("code", {}, code.code), ` (valid until ${time(code.expires_at)})`));
          },
        },
        "Provisioning code",
      ),
      " ",
      h(
        "button",
        {
          type: "button",
          disabled: !canChange(),
          onclick: async () => {
            if (!confirm(`Remove ${u.display_name} and revoke its endpoints?`)) return;
            if (await change("User removed.", () => api("DELETE", `/admin/v1/users/${encodeURIComponent(u.id)}`))) render();
          },
        },
        "Remove",
      ),
    ),
  ]);
  return [
    h("h1", {}, "Users and endpoints"),
    readonlyNote(),
    search,
    h("p", {}, `${list.total} users in all${query ? `; ${list.users.length} shown for “${query}”` : ""}.`),
    table(["name", "URIs", "active endpoints", ""], rows),
    panel,
    h("h2", {}, "Add a user"),
    add,
    h("h2", {}, "Bulk import"),
    importForm,
  ];
}

// ---- calls ----

function callRows(calls) {
  return calls.map((c) => [c.from, c.to, c.state, c.outcome_reason ?? "", c.media.join(" "), time(c.initiated_at), time(c.answered_at), time(c.ended_at)]);
}

const CALL_COLUMNS = ["from", "to", "state", "outcome", "media", "started", "answered", "ended"];

async function callsPage() {
  const live = h("div", { "aria-live": "polite", id: "live-calls" }, h("p", {}, "Connecting…"));
  const source = new EventSource("/admin/v1/calls/live");
  source.addEventListener("calls", (event) => {
    const { calls } = JSON.parse(event.data);
    live.replaceChildren(calls.length === 0 ? h("p", {}, "No call in progress.") : table(CALL_COLUMNS, callRows(calls)));
  });
  source.onerror = () => live.replaceChildren(h("p", { class: "error" }, "The live view lost its connection; it retries by itself."));
  state.live = source;
  const params = new URLSearchParams(location.hash.split("?")[1] ?? "");
  const filter = new URLSearchParams();
  for (const key of ["state", "party"]) if (params.get(key)) filter.set(key, params.get(key));
  const history = await api("GET", `/admin/v1/calls?limit=100&${filter}`);
  const form = h(
    "form",
    {
      "aria-label": "Filter the history",
      onsubmit: (event) => {
        event.preventDefault();
        const data = new FormData(form);
        const chosen = new URLSearchParams();
        for (const key of ["state", "party"]) if (data.get(key)) chosen.set(key, data.get(key));
        location.hash = `#/calls?${chosen}`;
      },
    },
    h(
      "label",
      {},
      "State",
      h(
        "select",
        { name: "state" },
        ["", "ringing", "answered", "rejected", "cancelled", "timeout", "ended"].map((s) =>
          h("option", { value: s, selected: s === (params.get("state") ?? "") }, s || "any"),
        ),
      ),
    ),
    h("label", {}, "Caller or callee contains", h("input", { name: "party", type: "search", value: params.get("party") ?? "" })),
    h("button", { type: "submit" }, "Filter"),
  );
  return [
    h("h1", {}, "Calls"),
    h("h2", {}, "In progress (live)"),
    live,
    h("h2", {}, "History"),
    form,
    h("p", {}, h("a", { href: `/admin/v1/calls.csv?${filter}`, download: "calls.csv" }, "Export these call detail records (CSV)")),
    history.calls.length === 0 ? h("p", {}, "No call matches.") : table(CALL_COLUMNS, callRows(history.calls)),
  ];
}

// ---- federation ----

async function federationPage() {
  let status;
  try {
    status = await api("GET", "/admin/v1/federation");
  } catch (e) {
    if (e.code === "federation-disabled") return [h("h1", {}, "Federation"), h("p", {}, e.message)];
    throw e;
  }
  const d = status.directory;
  const resync = h(
    "button",
    {
      type: "button",
      disabled: !canChange(),
      onclick: async () => {
        const result = await change("Resynchronised.", () => api("POST", "/admin/v1/federation/resync"));
        if (result) render();
      },
    },
    "Force a resync",
  );
  return [
    h("h1", {}, "Federation"),
    readonlyNote(),
    h("p", {}, `This provider: ${status.provider_id}; its certificate expires ${time(status.certificate.not_after * 1000)}.`),
    d
      ? h("p", {}, `Discovery dictionary of ${d.federation}, version ${d.version}, issued ${time(d.issued_at * 1000)}, expires ${time(d.expires * 1000)}; ${d.members.length} members.`)
      : h("p", { class: "warning" }, `No discovery dictionary in force${status.directory_last_error ? `: ${status.directory_last_error}` : ""}.`),
    resync,
    h("h2", {}, "Peers"),
    table(
      ["provider", "filter generation", "URIs", "bits", "false-positive rate", "last sync", "latency", "errors", "state"],
      status.peers.map((p) => [
        p.display_name ? `${p.display_name} (${p.provider_id})` : p.provider_id,
        p.generation ?? "",
        p.items ?? "",
        p.bits ?? "",
        p.estimated_false_positive_rate === null || p.estimated_false_positive_rate === undefined ? "" : `${(p.estimated_false_positive_rate * 100).toFixed(3)} %`,
        time(p.last_sync_ms),
        p.latency_ms === null || p.latency_ms === undefined ? "" : `${p.latency_ms} ms`,
        p.errors,
        h("span", { class: p.breaker_open || p.last_error ? "warning" : "ok" }, p.breaker_open ? "down (breaker open)" : p.last_error ? `error: ${p.last_error}` : "up"),
      ]),
    ),
  ];
}

// ---- relay ----

/** Total relayed bandwidth over the last samples, as a line (both directions added). */
function bandwidthChart(samples) {
  const width = 640, height = 160, left = 44, top = 10, bottom = 20;
  const plotWidth = width - left - 8, plotHeight = height - top - bottom;
  const max = Math.max(1, ...samples);
  const x = (i) => left + (i / Math.max(1, RELAY_SAMPLES - 1)) * plotWidth;
  const y = (v) => top + plotHeight - (v / max) * plotHeight;
  const offset = RELAY_SAMPLES - samples.length;
  return h(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Relayed bandwidth over the last two minutes, now ${kbits(samples.at(-1) ?? 0)}`,
    },
    h("title", {}, "Relayed bandwidth, both directions"),
    h("polyline", { class: "p50", points: samples.map((v, i) => `${x(i + offset)},${y(v)}`).join(" ") }),
    h("text", { x: 2, y: top + 8 }, kbits(max)),
    h("text", { x: left, y: height - 4 }, "2 min ago"),
    h("text", { x: width - 30, y: height - 4 }, "now"),
  );
}

const RELAY_SAMPLES = 60;
const RELAY_EVERY_MS = 2000;

function kbits(bitsPerSecond) {
  return `${(bitsPerSecond / 1000).toFixed(1)} kbit/s`;
}

async function relayPage() {
  const first = await api("GET", "/admin/v1/relay");
  if (!first.enabled) return [h("h1", {}, "Relay"), h("p", {}, "This provider runs no TURN relay (relay.enabled is false).")];
  const samples = [];
  const chartBox = h("div", {}, bandwidthChart(samples));
  const tableBox = h("div", { id: "relay-allocations", "aria-live": "polite" });
  const summary = h("p", {});
  let previous = { at: performance.now(), relay: first };
  const show = (relay, rates) => {
    const total = rates.reduce((sum, r) => sum + r, 0);
    summary.replaceChildren(
      `Relay ${relay.address}: ${relay.total.allocations} allocations; ${kbits(total)} now; ` +
        `${(relay.total.bytes_to_peer / 1e6).toFixed(2)} MB to peers and ${(relay.total.bytes_from_peer / 1e6).toFixed(2)} MB from peers by the live allocations.`,
    );
    tableBox.replaceChildren(
      relay.allocations.length === 0
        ? h("p", {}, "No allocation.")
        : table(
            ["endpoint", "relayed address", "since", "to peers", "from peers", "bandwidth"],
            relay.allocations.map((a, i) => [
              h("code", {}, a.endpoint),
              a.relayed_address,
              time(a.created_at),
              `${(a.bytes_to_peer / 1000).toFixed(1)} kB`,
              `${(a.bytes_from_peer / 1000).toFixed(1)} kB`,
              kbits(rates[i]),
            ]),
          ),
    );
  };
  show(first, first.allocations.map(() => 0));
  const timer = setInterval(async () => {
    let relay;
    try {
      relay = await api("GET", "/admin/v1/relay");
    } catch {
      return;
    }
    const now = performance.now();
    const seconds = (now - previous.at) / 1000;
    const before = new Map(previous.relay.allocations.map((a) => [a.relayed_address, a]));
    const rates = relay.allocations.map((a) => {
      const old = before.get(a.relayed_address);
      const bytes = a.bytes_to_peer + a.bytes_from_peer - (old ? old.bytes_to_peer + old.bytes_from_peer : 0);
      return seconds > 0 ? (bytes * 8) / seconds : 0;
    });
    samples.push(rates.reduce((sum, r) => sum + r, 0));
    if (samples.length > RELAY_SAMPLES) samples.shift();
    chartBox.replaceChildren(bandwidthChart(samples));
    show(relay, rates);
    previous = { at: now, relay };
  }, RELAY_EVERY_MS);
  state.live = { close: () => clearInterval(timer) };
  return [
    h("h1", {}, "Relay"),
    summary,
    h("h2", {}, "Bandwidth"),
    chartBox,
    h("h2", {}, "Allocations"),
    tableBox,
  ];
}

// ---- audit log ----

async function auditPage() {
  const entries = table(["when", "who", "method", "path", "status"], []);
  const rows = entries.querySelector("tbody");
  const more = h("button", { type: "button" }, "Older entries");
  let next = null;
  const load = async () => {
    const query = next ? `&before=${next.before}&before_id=${encodeURIComponent(next.before_id)}` : "";
    const page = await api("GET", `/admin/v1/audit?limit=50${query}`);
    const cells = page.entries.map((e) => [time(e.at), e.actor, e.method, h("code", {}, e.path), e.status]);
    rows.append(...cells.map(tableRow));
    next = page.next;
    more.hidden = !next;
  };
  more.addEventListener("click", () => load().catch((e) => say(e.message, "error")));
  await load();
  return [
    h("h1", {}, "Audit log"),
    h("p", {}, "Every change made through the admin API, and every login, newest first: who, what, when, and the answer."),
    entries,
    more,
  ];
}

// ---- settings ----

/** Rows of `key = value` for every leaf of the configuration, as `config defaults` names keys. */
function flatten(value, prefix = "") {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([key, item]) => flatten(item, prefix ? `${prefix}.${key}` : key));
  }
  return [[prefix, value === null ? "(unset)" : JSON.stringify(value)]];
}

async function settingsPage() {
  const config = await api("GET", "/admin/v1/settings");
  return [
    h("h1", {}, "Settings"),
    h("p", {}, "The configuration in force (read-only; change it in the configuration file or the environment and restart). Passwords are masked."),
    table(["key", "value"], flatten(config).map(([key, value]) => [h("code", {}, key), h("code", {}, value)])),
  ];
}

// ---- frame ----

const PAGES = {
  dashboard: dashboardPage,
  users: usersPage,
  calls: callsPage,
  federation: federationPage,
  relay: relayPage,
  audit: auditPage,
  settings: settingsPage,
};

async function render() {
  state.live?.close();
  state.live = null;
  if (!state.me) {
    try {
      state.me = await api("GET", "/admin/v1/session");
    } catch {
      state.me = null;
    }
  }
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.hidden = !state.me;
  who.hidden = !state.me;
  if (!state.me) {
    main.replaceChildren(...loginPage());
    return;
  }
  document.getElementById("who-name").textContent = `${state.me.name ?? "token"} (${state.me.role})`;
  const name = (location.hash.slice(2).split("?")[0] || "dashboard");
  const page = PAGES[name] ?? dashboardPage;
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    main.replaceChildren(...(await page()).filter(Boolean));
    document.title = `${name[0].toUpperCase()}${name.slice(1)} · Switchyard admin`;
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "error" }, e.message));
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  await change("Logged out.", () => api("DELETE", "/admin/v1/session"));
  state.me = null;
  render();
});
window.addEventListener("hashchange", async () => {
  await render();
  main.focus();
});
render();
