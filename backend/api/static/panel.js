// botsim admin panel: small helpers for the server-rendered pages.
// Text from Telegram or personas is only ever put into the page with textContent.
"use strict";

const API = "/api/v1";
let mePromise = null;

function me() {
  // The caller and the session's CSRF token (GET /api/v1/auth/me), fetched once per page.
  if (mePromise === null) {
    mePromise = fetch(API + "/auth/me", { credentials: "same-origin" }).then((r) => {
      if (r.status === 401) {
        window.location.assign("/login");
        throw new Error("not logged in");
      }
      if (!r.ok) throw new Error("auth/me answered " + r.status);
      return r.json();
    });
  }
  return mePromise;
}

function fieldName(loc) {
  // A refused field's path for people: ["body", "style", "emoji_rate"] → "style.emoji_rate".
  const parts = Array.isArray(loc) ? loc : [];
  return (parts.length > 1 && parts[0] === "body" ? parts.slice(1) : parts).join(".");
}

function fieldProblems(body) {
  // [field, reason] pairs of a 422 answer (RFC 9457 problem details with "errors"), or null.
  if (!body || !Array.isArray(body.errors)) return null;
  return body.errors.map((p) => [fieldName(p.loc), p.msg || ""]);
}

function detailText(body, status) {
  // A readable line from an error answer (RFC 9457 problem details: "detail", "title").
  if (body && typeof body.detail === "string" && body.detail) return body.detail;
  if (body && typeof body.title === "string" && body.title) return body.title;
  return "request failed (" + status + ")";
}

async function send(method, path, body) {
  // A state-changing call with the CSRF header; resolves to {ok, status, body}.
  const who = await me();
  const headers = { "X-CSRF-Token": who.csrf_token || "" };
  const init = { method: method, headers: headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { ok: r.ok, status: r.status, body: data };
}

function showError(message) {
  const el = document.getElementById("panel-error");
  if (!el) return;
  el.textContent = message || "";
  el.hidden = !message;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function shocksText(shocks) {
  // {"BIST100": -2.5} → "BIST100 −2.5 %" (a real minus sign), comma-separated.
  if (!shocks || typeof shocks !== "object") return "";
  return Object.entries(shocks).map(([sym, pct]) =>
    sym + " " + (Number(pct) > 0 ? "+" : "−") + Math.abs(Number(pct)) + " %").join(", ");
}

// --- login ----------------------------------------------------------------------------

function initLogin() {
  const form = document.getElementById("login-form");
  if (!form) return;
  const err = document.getElementById("login-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const data = new FormData(form);
    const r = await fetch(API + "/auth/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: data.get("username"), password: data.get("password") }),
    });
    if (r.ok) {
      window.location.assign("/");
      return;
    }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    err.textContent = r.status === 422 ? "enter a username and a password"
      : detailText(body, r.status);
    err.hidden = false;
  });
}

function initLogout() {
  const button = document.getElementById("logout");
  if (!button) return;
  button.addEventListener("click", async () => {
    const r = await send("POST", API + "/auth/logout");
    if (r.ok || r.status === 401) window.location.assign("/login");
    else showError(detailText(r.body, r.status));
  });
}

// --- live group -----------------------------------------------------------------------

function initLive() {
  const section = document.getElementById("live");
  const select = document.getElementById("chat-select");
  if (select) {
    select.addEventListener("change", () => {
      window.location.assign("/?chat_id=" + encodeURIComponent(select.value));
    });
  }
  if (!section) return;
  const chatId = section.dataset.chatId;
  const list = document.getElementById("messages");
  const state = document.getElementById("stream-state");
  const namesNode = document.getElementById("bot-names");
  const botNames = namesNode ? JSON.parse(namesNode.textContent || "{}") : {};
  const byTgId = new Map();
  const seen = new Set();
  for (const li of list.querySelectorAll("li.msg")) {
    seen.add(li.dataset.id);
    const text = li.querySelector(".text");
    const sender = li.querySelector(".sender");
    byTgId.set(li.dataset.tgId, {
      sender: sender ? sender.textContent : "", text: text ? text.textContent : "",
    });
  }

  function senderOf(m) {
    if (m.bot_id !== null && m.bot_id !== undefined) {
      return botNames[String(m.bot_id)] || "bot " + m.bot_id;
    }
    return m.sender_name || "user " + m.sender_id;
  }

  function render(m) {
    if (seen.has(String(m.id))) return;
    seen.add(String(m.id));
    const li = el("li", m.bot_id === null ? "msg human" : "msg");
    li.dataset.id = String(m.id);
    li.dataset.tgId = String(m.telegram_message_id);
    const meta = el("span", "meta");
    meta.appendChild(el("span", "sender", senderOf(m)));
    meta.appendChild(document.createTextNode(" "));
    meta.appendChild(el("time", null, String(m.created_at).replace("T", " ").slice(0, 19)));
    if (m.kind && m.kind !== "text") meta.appendChild(el("span", "kind", " [" + m.kind + "]"));
    li.appendChild(meta);
    if (m.reply_to_telegram_message_id !== null && m.reply_to_telegram_message_id !== undefined) {
      const target = byTgId.get(String(m.reply_to_telegram_message_id));
      let what = "message #" + m.reply_to_telegram_message_id;
      if (target) {
        const snippet = target.text.length > 60 ? target.text.slice(0, 60) + "…" : target.text;
        what = target.sender + ": " + snippet;
      }
      li.appendChild(el("span", "reply", "↪ answers " + what));
    }
    li.appendChild(el("span", "text", m.text));
    byTgId.set(String(m.telegram_message_id), { sender: senderOf(m), text: m.text });
    list.appendChild(li);
    li.scrollIntoView({ block: "end" });
  }

  const worldSeen = new Set();

  function renderWorld(e) {
    // A world event as a row of its own, placed by its time among the messages.
    if (worldSeen.has(String(e.id))) return;
    worldSeen.add(String(e.id));
    const at = String(e.at).replace("T", " ").slice(0, 19);
    const li = el("li", "world-event");
    li.dataset.worldId = String(e.id);
    const meta = el("span", "meta");
    meta.appendChild(el("span", "sender", "world event"));
    meta.appendChild(document.createTextNode(" "));
    meta.appendChild(el("time", null, at));
    li.appendChild(meta);
    const moves = shocksText(e.shocks);
    li.appendChild(el("span", "text", "📰 " + e.headline + (moves ? " (" + moves + ")" : "")));
    let before = null;
    for (const other of list.children) {
      const time = other.querySelector("time");
      if (time && time.textContent > at) { before = other; break; }
    }
    list.insertBefore(li, before);
    if (before === null) li.scrollIntoView({ block: "end" });
  }

  // World events from the time of the oldest message shown (UTC; the last hour without one).
  const firstTime = list.querySelector("li.msg time");
  let url = API + "/events?chat_id=" + encodeURIComponent(chatId) +
    "&after_id=" + encodeURIComponent(section.dataset.lastId || "0");
  if (firstTime && /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/.test(firstTime.textContent)) {
    url += "&world_since=" + encodeURIComponent(firstTime.textContent.replace(" ", "T") + "Z");
  }
  const source = new EventSource(url);
  source.addEventListener("open", () => { state.textContent = "live"; });
  source.addEventListener("error", () => { state.textContent = "reconnecting…"; });
  source.addEventListener("message", (ev) => {
    try { render(JSON.parse(ev.data)); } catch (e) { state.textContent = "bad event"; }
  });
  source.addEventListener("world_event", (ev) => {
    try { renderWorld(JSON.parse(ev.data)); } catch (e) { state.textContent = "bad event"; }
  });

  const form = document.getElementById("human-form");
  const status = document.getElementById("human-status");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const body = { chat_id: Number(chatId), text: String(data.get("text") || "") };
    const reply = String(data.get("reply_to") || "").trim();
    if (reply) body.reply_to_message_id = Number(reply);
    status.textContent = "sending…";
    const r = await send("POST", "/panel/sandbox/post", body);
    if (r.ok) {
      status.textContent = "sent (message " + r.body.telegram_message_id + ")";
      form.reset();
    } else {
      status.textContent = "not sent: " + detailText(r.body, r.status);
    }
  });
}

// --- persona editor -------------------------------------------------------------------

function showProblems(list, items) {
  // Fill the <ul> `list` with [field, reason] pairs ("none" when there are none).
  list.replaceChildren();
  if (items.length === 0) {
    list.appendChild(el("li", "muted", "none"));
    return;
  }
  for (const [field, reason] of items) {
    const li = el("li", "error");
    li.appendChild(el("code", null, field));
    li.appendChild(document.createTextNode(" " + reason));
    list.appendChild(li);
  }
}

function readObject(area, errors, status, what, failed) {
  // The JSON object typed into `area`, or null after listing why not (and "<failed>: ...").
  let body;
  try {
    body = JSON.parse(area.value);
  } catch (e) {
    showProblems(errors, [["JSON", String(e.message || e)]]);
    status.textContent = failed + ": the JSON does not parse";
    return null;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    showProblems(errors, [["JSON", "expected an object of " + what]]);
    status.textContent = failed + ": expected an object of " + what;
    return null;
  }
  return body;
}

function problemsOf(r) {
  // [field, reason] pairs from a failed answer (a 422's errors, or one line).
  const fields = r.status === 422 ? fieldProblems(r.body) : null;
  if (fields) return fields;
  return [["error " + r.status, detailText(r.body, r.status)]];
}

function initPersona() {
  const form = document.getElementById("persona-form");
  if (!form) return;
  const botId = form.dataset.botId;
  const area = document.getElementById("persona-json");
  const status = document.getElementById("persona-status");
  const errors = document.getElementById("persona-errors");

  function listProblems(items) { showProblems(errors, items); }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let body;
    try {
      body = JSON.parse(area.value);
    } catch (e) {
      listProblems([["JSON", String(e.message || e)]]);
      status.textContent = "not saved";
      return;
    }
    status.textContent = "saving…";
    const r = await send("PATCH", API + "/bots/" + encodeURIComponent(botId), body);
    if (r.ok) {
      listProblems([]);
      status.textContent = "saved";
    } else {
      listProblems(problemsOf(r));
      status.textContent = r.status === 422 && fieldProblems(r.body)
        ? "not saved: fix the fields listed" : "not saved";
    }
  });

  const preview = document.getElementById("preview-form");
  const summary = document.getElementById("preview-summary");
  const layers = document.getElementById("preview-layers");
  preview.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const chat = new FormData(preview).get("chat_id");
    summary.textContent = "loading…";
    layers.replaceChildren();
    const r = await fetch(API + "/bots/" + encodeURIComponent(botId) + "/preview?chat_id=" +
      encodeURIComponent(String(chat)), { credentials: "same-origin" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      summary.textContent = "no preview: " + detailText(body, r.status);
      return;
    }
    summary.textContent = "~" + body.tokens_estimate + " tokens · topic " + body.topic +
      " · mood " + body.mood + " · P&L " + body.pnl_pct + "%";
    for (const layer of body.layers) {
      const box = el("div", "layer");
      box.appendChild(el("h3", null, layer.name));
      box.appendChild(el("pre", null, layer.text));
      layers.appendChild(box);
    }
  });
}

// --- interview (admins) ---------------------------------------------------------------

function initInterview() {
  const form = document.getElementById("interview-form");
  if (!form) return;
  const botId = form.dataset.botId;
  const question = document.getElementById("interview-question");
  const offline = document.getElementById("interview-offline");
  const ask = document.getElementById("interview-ask");
  const status = document.getElementById("interview-status");
  const answer = document.getElementById("interview-answer");
  const provider = document.getElementById("interview-provider");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    answer.hidden = true;
    answer.textContent = "";
    provider.textContent = "";
    status.textContent = "asking…";
    ask.disabled = true;
    let r;
    try {
      r = await send("POST", API + "/bots/" + encodeURIComponent(botId) + "/interview", {
        question: question.value, llm: offline.checked ? "offline" : "settings",
      });
    } finally {
      ask.disabled = false;
    }
    if (!r.ok || !r.body) {
      status.textContent = "no answer: " + problemsOf(r).map(
        ([field, reason]) => field + ": " + reason).join("; ");
      return;
    }
    status.textContent = "";
    answer.textContent = r.body.answer;
    answer.hidden = false;
    provider.textContent = "answered by " + r.body.provider;
  });
}

// --- new persona ----------------------------------------------------------------------

function initNewPersona() {
  const form = document.getElementById("new-persona-form");
  if (!form) return;
  const token = document.getElementById("token");
  const area = document.getElementById("persona-json");
  const create = document.getElementById("create");
  const status = document.getElementById("create-status");
  const errors = document.getElementById("errors");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = readObject(area, errors, status, "persona fields", "not created");
    if (body === null) return;
    body.token = token.value.trim();
    status.textContent = "creating…";
    create.disabled = true;
    let r;
    try {
      r = await send("POST", API + "/bots", body);
    } finally {
      create.disabled = false;
    }
    if (r.status === 201 && r.body && r.body.id !== undefined) {
      showProblems(errors, []);
      token.value = "";
      status.textContent = "created bot " + r.body.id;
      window.location.assign("/personas/" + encodeURIComponent(String(r.body.id)));
      return;
    }
    showProblems(errors, problemsOf(r));
    status.textContent = r.status === 422 ? "not created: fix the fields listed"
      : "not created (" + r.status + ")";
  });
}

// --- group membership -----------------------------------------------------------------

function initGroups() {
  const section = document.getElementById("groups");
  if (!section) return;
  const botId = Number(section.dataset.botId);
  const status = document.getElementById("membership-status");
  for (const button of section.querySelectorAll(".chat-membership button[data-chat-id]")) {
    button.addEventListener("click", async () => {
      const row = button.closest(".chat-membership");
      const chatId = button.dataset.chatId;
      const join = row.dataset.member !== "true";
      const title = row.querySelector(".chat-title").textContent;
      button.disabled = true;
      status.textContent = (join ? "adding to " : "removing from ") + title + "…";
      let r;
      try {
        r = await send(join ? "PUT" : "DELETE", API + "/chats/" + encodeURIComponent(chatId) +
          "/bots/" + encodeURIComponent(String(botId)));
      } finally {
        button.disabled = false;
      }
      if (!r.ok) {
        status.textContent = "not changed (" + title + "): " + detailText(r.body, r.status);
        return;
      }
      const member = Array.isArray(r.body.bot_ids) && r.body.bot_ids.includes(botId);
      row.dataset.member = member ? "true" : "false";
      row.querySelector(".membership-state").textContent = member ? "member" : "not a member";
      button.textContent = member ? "Remove" : "Add";
      status.textContent = (member ? "now a member of " : "no longer in ") + title;
    });
  }
}

// --- settings -------------------------------------------------------------------------

function initSettings() {
  const form = document.getElementById("settings-form");
  if (!form) return;
  const area = document.getElementById("settings-json");
  const save = document.getElementById("settings-save");
  const status = document.getElementById("settings-status");
  const errors = document.getElementById("settings-errors");
  const simState = document.getElementById("sim-state");
  const simStatus = document.getElementById("sim-status");
  const start = document.getElementById("sim-start");
  const stop = document.getElementById("sim-stop");
  let edited = false;  // the textarea holds changes not saved yet
  area.addEventListener("input", () => { edited = true; });

  function showActive(active) {
    simState.dataset.active = active ? "true" : "false";
    simState.textContent = active ? "running" : "stopped";
  }

  function showSettings(settings) {
    // The server's settings into the page; unsaved edits keep all but simulation_active.
    if (!settings || typeof settings !== "object") return;
    showActive(settings.simulation_active === true);
    if (!edited) {
      area.value = JSON.stringify(settings, null, 2);
      return;
    }
    try {
      const draft = JSON.parse(area.value);
      if (draft && typeof draft === "object" && !Array.isArray(draft) &&
          "simulation_active" in draft) {
        draft.simulation_active = settings.simulation_active;
        area.value = JSON.stringify(draft, null, 2);
      }
    } catch (e) { /* unparsable edits are left as they are */ }
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = readObject(area, errors, status, "settings", "not saved");
    if (body === null) return;
    status.textContent = "saving…";
    save.disabled = true;
    let r;
    try {
      r = await send("PATCH", API + "/settings", body);
    } finally {
      save.disabled = false;
    }
    if (r.ok) {
      showProblems(errors, []);
      edited = false;
      showSettings(r.body);
      status.textContent = "saved";
      return;
    }
    showProblems(errors, problemsOf(r));
    status.textContent = r.status === 422 ? "not saved: fix the fields listed"
      : "not saved: " + detailText(r.body, r.status);
  });

  async function simulation(action) {
    start.disabled = true;
    stop.disabled = true;
    simStatus.textContent = (action === "start" ? "starting" : "stopping") + "…";
    let r;
    try {
      r = await send("POST", API + "/simulation/" + action);
    } finally {
      start.disabled = false;
      stop.disabled = false;
    }
    if (r.ok) {
      showSettings(r.body);
      simStatus.textContent = r.body && r.body.simulation_active ? "started" : "stopped";
      return;
    }
    showProblems(errors, problemsOf(r));
    simStatus.textContent = "not " + (action === "start" ? "started" : "stopped") + ": " +
      detailText(r.body, r.status);
  }

  start.addEventListener("click", () => simulation("start"));
  stop.addEventListener("click", () => simulation("stop"));
}

// --- world events ---------------------------------------------------------------------

function splitList(text) {
  return String(text || "").split(/[,\s]+/).filter((x) => x.length > 0);
}

function parsePairs(text, field, valueOk, convert, expected, problems) {
  // "A=1, B=2" → {A: convert("1"), ...}; a bad pair adds [field, why] to problems.
  const out = {};
  for (const pair of splitList(text)) {
    const at = pair.indexOf("=");
    const key = at > 0 ? pair.slice(0, at) : "";
    const value = at > 0 ? pair.slice(at + 1) : "";
    if (!key || !valueOk(value)) {
      problems.push([field, "'" + pair + "': write " + expected]);
      continue;
    }
    out[key] = convert(value);
  }
  return out;
}

function initWorldEvents() {
  const form = document.getElementById("world-event-form");
  const errors = document.getElementById("world-event-errors");
  const status = document.getElementById("world-event-status");

  async function inject(body, what) {
    status.textContent = "sending " + what + "…";
    const r = await send("POST", API + "/world-events", body);
    if (r.status === 201) {
      showProblems(errors, []);
      status.textContent = "stored event " + r.body.id;
      window.location.reload();
      return;
    }
    showProblems(errors, problemsOf(r));
    status.textContent = r.status === 422 ? "not stored: fix the fields listed"
      : "not stored: " + detailText(r.body, r.status);
  }

  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const data = new FormData(form);
      const problems = [];
      const body = { headline: String(data.get("headline") || "").trim() };
      body.shocks = parsePairs(data.get("shocks"), "shocks",
        (v) => /^[+-]?\d+(\.\d+)?%?$/.test(v), (v) => Number(v.replace("%", "")),
        "SYMBOL=PERCENT, e.g. BIST100=-2.5", problems);
      const shocks = {};
      for (const [sym, pct] of Object.entries(body.shocks)) shocks[sym.toUpperCase()] = pct;
      body.shocks = shocks;
      body.views = parsePairs(data.get("views"), "views",
        (v) => v === "bullish" || v === "bearish", (v) => v,
        "topic=bullish or topic=bearish", problems);
      body.topics = splitList(data.get("topics"));
      const at = String(data.get("at") || "");
      if (at) {
        const when = new Date(at);
        if (Number.isNaN(when.getTime())) problems.push(["at", "not a date and time"]);
        else body.at = when.toISOString();
      }
      if (problems.length) {
        showProblems(errors, problems);
        status.textContent = "not sent: fix the fields listed";
        return;
      }
      await inject(body, "the event");
    });
  }
  for (const button of document.querySelectorAll("#world-presets button[data-preset]")) {
    button.addEventListener("click", () => {
      button.disabled = true;
      inject({ preset: button.dataset.preset }, button.dataset.preset)
        .finally(() => { button.disabled = false; });
    });
  }
  for (const button of document.querySelectorAll("button.cancel-event[data-id]")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      const r = await send("DELETE", API + "/world-events/" + encodeURIComponent(button.dataset.id));
      if (r.ok) {
        window.location.reload();
        return;
      }
      button.disabled = false;
      showError("not cancelled: " + detailText(r.body, r.status));
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  initLogin();
  initLogout();
  initLive();
  initPersona();
  initInterview();
  initNewPersona();
  initGroups();
  initSettings();
  initWorldEvents();
});
