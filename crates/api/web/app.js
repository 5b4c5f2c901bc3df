// Ringline's web client: sign in, a contact list, calls with real WebRTC.
//
// Written against docs/protocol.md and the REST API (docs/api.md) only. One ES module, no
// framework and no build step: the server embeds this file. State lives in `state`; each
// screen is a plain element shown or hidden by `render()`.

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("ringline.token"), // per tab: two windows, two people
  me: JSON.parse(sessionStorage.getItem("ringline.me") || "null"),
  socket: null,
  reconnectDelay: 1000,
  seenEvents: new Set(),
  // The last position of our event stream we saw (docs/protocol.md, "Resuming"): a socket
  // that comes back with it gets what it missed. Kept per tab, so a reload resumes too.
  resumeFrom: sessionStorage.getItem("ringline.resume"),
  // The latest connection.ack: its open_calls say where we stand after a resync.
  lastAck: null,
  // Events up to this stream position were replayed for a page that reloaded mid-call: their
  // SDP and candidates belonged to the peer connection that died with the old page.
  replayedUntil: null,
  restoredOnLoad: false,
  everOnline: false,
  contacts: new Map(), // id -> {id, name}
  // The one call this tab is part of:
  // {id, role: "caller"|"callee", peerId, peerName, type, status, answeredAt}
  call: null,
  pc: null,
  localStream: null,
  pendingCandidates: [],
  pendingOffer: null,
  offerWaiters: [],
  // While our own POST /api/calls/initiate/ is in flight, events about calls we don't know yet
  // wait here: the callee can decline (and the event reach us) before that response does.
  initiating: false,
  earlyEvents: [],
  timer: null,
  ringer: null,
  peerDrop: null, // {timers} while the other person's connection is down
  quality: null, // {callId, pc, sampler, last, samples, reported, lastSent} during a connected call
};

// Call quality (docs/api.md, "Call quality"): getStats() is read every 2 s; a report goes to
// the server soon after the media connects, every 12 s after (5 a minute, under the server's
// 6, leaving room for the final one) and once at the hangup. A quiet hint shows while 3 of
// the last 5 samples are poor, by Twilio's thresholds.
const QUALITY_SAMPLE_MS = 2000;
const QUALITY_REPORT_MS = 12000;
const POOR_RTT_MS = 400;
const POOR_JITTER_MS = 30;
const POOR_LOSS = 0.03;
const POOR_MOS = 3.5;

// How long to wait after the other person's connection dropped before restarting ICE (the
// caller does it), and before giving up on the call.
const ICE_RESTART_AFTER_MS = 2000;
const PEER_GIVE_UP_MS = 15000;

/// What this tab knows about its call, kept across a reload (sessionStorage is per tab).
function saveCall(extra = {}) {
  const call = state.call;
  if (!call) return sessionStorage.removeItem("ringline.call");
  const saved = JSON.parse(sessionStorage.getItem("ringline.call") || "null");
  const same = saved && String(saved.id) === String(call.id) ? saved : {};
  const { id, role, peerId, peerName, type } = call;
  sessionStorage.setItem("ringline.call", JSON.stringify({ ...same, id, role, peerId, peerName, type, ...extra }));
}

function savedCall() {
  return JSON.parse(sessionStorage.getItem("ringline.call") || "null");
}

// ---------------------------------------------------------------- Web Push

// The service worker (sw.js) rings this browser when no tab is visible. It needs the session
// to decline a call, and a tab it opens to answer needs it to sign in: both read it from
// IndexedDB, where each signed-in tab leaves it (one entry per user).
function sessionStore(mode, work) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open("ringline", 1);
    request.onupgradeneeded = () => request.result.createObjectStore("sessions", { keyPath: "user" });
    request.onerror = () => reject(request.error);
    request.onsuccess = () => {
      const store = request.result.transaction("sessions", mode).objectStore("sessions");
      const done = work(store);
      done.onsuccess = () => resolve(done.result);
      done.onerror = () => reject(done.error);
    };
  });
}

const saveSession = () => sessionStore("readwrite", (s) => s.put({ user: state.me.id, token: state.token, me: state.me }));
const readSession = (user) => sessionStore("readonly", (s) => s.get(user));
const dropSession = (user) => sessionStore("readwrite", (s) => s.delete(user));

const fromBase64Url = (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

/// Registers the service worker and, where the browser has a push service, subscribes to the
/// server's pushes. Best effort: without them the app still rings while a tab is open.
async function enableBackgroundRinging() {
  if (!("serviceWorker" in navigator) || !state.me) return;
  try {
    await saveSession();
    const registration = await navigator.serviceWorker.register("/sw.js");
    if (!("PushManager" in window) || (await Notification.requestPermission()) !== "granted") return;
    const { vapid_public_key: key } = await api("/api/push/config/", { auth: false });
    const subscription =
      (await registration.pushManager.getSubscription()) ||
      (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: fromBase64Url(key) }));
    await api("/api/push/subscriptions/", { method: "POST", body: subscription.toJSON() });
  } catch (error) {
    console.info("[ringline] background ringing is off:", error.message);
  }
}

async function disableBackgroundRinging(me) {
  if (!("serviceWorker" in navigator) || !me) return;
  await dropSession(me.id).catch(() => {});
  const registration = await navigator.serviceWorker.getRegistration();
  const subscription = await registration?.pushManager?.getSubscription().catch(() => null);
  if (subscription) {
    await api("/api/push/subscriptions/", { method: "DELETE", body: { endpoint: subscription.endpoint } }).catch(() => {});
  }
}

/// Opened by the service worker's Answer (`/?answer=<call>&user=<user>`): sign in as that user
/// from the stored session if this tab is not signed in, and answer once the call shows up.
async function openedToAnswer() {
  const params = new URLSearchParams(location.search);
  const callId = params.get("answer");
  const callBack = params.get("call");
  if (!callId && !callBack) return false;
  history.replaceState(null, "", "/");
  if (callId) state.answerOnOpen = callId;
  // Opened from a missed call's "Call back": the call is placed once the socket is up.
  if (callBack) state.callOnOpen = { peer: callBack, type: params.get("type") === "video" ? "video" : "voice" };
  if (state.token && state.me) return false;
  const session = await readSession(params.get("user") || "").catch(() => null);
  if (!session) return false;
  await signIn(session.token, session.me);
  return true;
}

// ---------------------------------------------------------------- REST

class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { "content-type": "application/json" };
  if (auth) headers.authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.detail || response.statusText, data?.code);
  return { status: response.status, data };
}

// ---------------------------------------------------------------- notices

function notify(text, { error = false } = {}) {
  const notice = $("notice");
  notice.textContent = text;
  notice.classList.toggle("error", error);
  notice.hidden = !text;
}

/// "Ada Lovelace" → "AL"; one word → its first letter.
const initials = (name) =>
  (name || "?").trim().split(/\s+/).slice(0, 2).map((word) => Array.from(word)[0] ?? "").join("") || "?";
const nameOf = (user) => [user.first_name, user.last_name].filter(Boolean).join(" ") || user.username || user.id;

// ---------------------------------------------------------------- sign-in

/// Whether the server runs demo sign-in (`ringline demo`): the page then lists the demo users;
/// otherwise it asks the demo endpoints nothing.
const demoEnabled = document.querySelector('meta[name="ringline-demo"]')?.content === "on";

async function showSignIn() {
  render();
  $("demo").hidden = true;
  if (!demoEnabled) return;
  try {
    const { data } = await api("/api/demo/users/", { auth: false });
    const list = $("demo-users");
    list.replaceChildren(
      ...data.users.map((user) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = `Sign in as ${nameOf(user)}`;
        button.dataset.user = user.id;
        button.addEventListener("click", () => demoSignIn(user.id));
        item.append(button);
        return item;
      }),
    );
    $("demo").hidden = data.users.length === 0;
    $("token-help").hidden = data.users.length > 0;
  } catch {
    $("demo").hidden = true;
  }
}

async function demoSignIn(userId) {
  try {
    const { data } = await api("/api/demo/token/", { method: "POST", body: { user_id: userId }, auth: false });
    await signIn(data.token, { id: data.user.id, name: nameOf(data.user) });
  } catch (error) {
    notify(`Could not sign in: ${error.message}`, { error: true });
  }
}

function userFromToken(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const id = String(claims.user_id ?? claims.sub ?? "");
    return { id, name: claims.username || id };
  } catch {
    return null;
  }
}

async function signIn(token, me) {
  state.token = token;
  try {
    await api("/api/calls/"); // checks the token
  } catch (error) {
    state.token = null;
    notify(error.status === 401 ? "That token is not valid." : `Could not sign in: ${error.message}`, { error: true });
    return;
  }
  state.me = me || userFromToken(token);
  // The name the directory has, rather than what the token happens to carry.
  try {
    const { data } = await api("/api/users/me/");
    state.me = { id: data.id, name: nameOf(data) };
  } catch {
    // An older server without /api/users/me/: the token's claims will do.
  }
  sessionStorage.setItem("ringline.token", token);
  sessionStorage.setItem("ringline.me", JSON.stringify(state.me));
  notify("");
  start();
  enableBackgroundRinging();
}

function signOut() {
  hangUpLocally();
  disableBackgroundRinging(state.me);
  state.token = null;
  state.me = null;
  sessionStorage.removeItem("ringline.token");
  sessionStorage.removeItem("ringline.me");
  state.socket?.close(1000);
  state.socket = null;
  showSignIn();
}

async function start() {
  render();
  connect();
  await loadContacts();
  await loadHistory();
  await loadCallSettings();
}

// ---------------------------------------------------------------- contacts and history

async function loadContacts() {
  // The people the directory says you share a conversation with; the call history adds the
  // rest (loadHistory).
  try {
    const { data } = await api("/api/users/me/contacts/");
    for (const user of data.results) state.contacts.set(user.id, { id: user.id, name: nameOf(user) });
  } catch {
    // An older server without the endpoint: the call history alone.
  }
  if (demoEnabled) {
    try {
      const { data } = await api("/api/demo/users/", { auth: false });
      for (const user of data.users) state.contacts.set(user.id, { id: user.id, name: nameOf(user) });
    } catch {
      // Demo sign-in went away meanwhile: the contacts above will do.
    }
  }
  renderContacts();
}

function renderContacts() {
  const list = $("contacts");
  const people = [...state.contacts.values()].filter((person) => person.id !== state.me?.id);
  list.replaceChildren(
    ...people.map((person) => {
      const item = document.createElement("li");
      item.dataset.user = person.id;
      const who = document.createElement("span");
      who.className = "who";
      const avatar = document.createElement("span");
      avatar.className = "avatar";
      avatar.setAttribute("aria-hidden", "true");
      avatar.textContent = initials(person.name);
      const name = document.createElement("span");
      name.textContent = person.name;
      who.append(avatar, name);
      const buttons = document.createElement("span");
      buttons.className = "buttons";
      for (const type of ["voice", "video"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = `call-${type}`;
        button.textContent = type === "voice" ? "Voice" : "Video";
        button.setAttribute("aria-label", `${type === "voice" ? "Voice" : "Video"} call ${person.name}`);
        button.addEventListener("click", () => startCall(person.id, type));
        buttons.append(button);
      }
      item.append(who, buttons);
      return item;
    }),
  );
}

function describeCall(call) {
  const outgoing = call.caller.id === state.me.id;
  const other = outgoing ? call.receiver : call.caller;
  const type = call.call_type === "video" ? "video" : "voice";
  const duration = call.duration_seconds;
  let what;
  let missed = false;
  switch (call.status) {
    case "ended": {
      what = `${outgoing ? "Outgoing" : "Incoming"} ${type} call · ${formatDuration(duration ?? 0)}`;
      // A voice call someone turned video: "voice call, video from 1:20".
      if (type === "voice" && call.video_at && call.answered_at) {
        const seconds = Math.max(0, Math.floor((Date.parse(call.video_at) - Date.parse(call.answered_at)) / 1000));
        what += ` · video from ${formatDuration(seconds)}`;
      }
      if (call.end_reason === "switched_call") what += " · switched to another call";
      break;
    }
    case "missed":
      missed = !outgoing;
      what = outgoing ? `No answer (${type})` : `Missed ${type} call`;
      break;
    case "rejected":
      what = outgoing ? `Declined (${type})` : `You declined (${type})`;
      break;
    case "cancelled":
      missed = !outgoing;
      what = outgoing ? `Cancelled (${type})` : `Missed ${type} call`;
      break;
    default:
      what = `${call.status} (${type})`;
  }
  return { other, what, missed };
}

async function loadHistory() {
  try {
    const { data } = await api("/api/calls/");
    const list = $("history");
    list.replaceChildren(
      ...data.results.map((call) => {
        const { other, what, missed } = describeCall(call);
        state.contacts.set(other.id, state.contacts.get(other.id) || { id: other.id, name: nameOf(other) });
        const item = document.createElement("li");
        item.dataset.call = call.id;
        item.dataset.status = call.status;
        item.classList.toggle("missed", missed);
        const text = document.createElement("span");
        const name = document.createElement("strong");
        name.textContent = nameOf(other);
        const detail = document.createElement("span");
        detail.className = "what";
        detail.textContent = ` ${what}`;
        text.append(name, detail);
        const when = document.createElement("time");
        when.className = "when";
        when.dateTime = call.started_at;
        when.textContent = new Date(call.started_at).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
        const back = document.createElement("button");
        back.type = "button";
        back.className = "call-back link";
        back.textContent = "Call back";
        back.setAttribute("aria-label", `Call ${nameOf(other)} back (${call.call_type === "video" ? "video" : "voice"})`);
        back.addEventListener("click", () => startCall(other.id, call.call_type === "video" ? "video" : "voice"));
        item.append(text, when, back);
        // A call someone placed to you that you missed or declined: the place to stop them.
        if (call.receiver.id === state.me.id && ["missed", "rejected", "cancelled"].includes(call.status)) {
          const block = document.createElement("button");
          block.type = "button";
          block.className = "block link";
          block.textContent = "Block";
          block.setAttribute("aria-label", `Block ${nameOf(other)}`);
          block.addEventListener("click", () => blockUser(other));
          item.append(block);
        }
        return item;
      }),
    );
    if (data.results.length === 0) {
      const empty = document.createElement("li");
      empty.textContent = "No calls yet.";
      list.replaceChildren(empty);
    }
    renderContacts();
  } catch (error) {
    if (error.status === 401) signOut();
  }
}

// ---------------------------------------------------------------- call settings and blocks

async function loadCallSettings() {
  try {
    const { data } = await api("/api/call-settings/");
    $("who-can-call").value = data.who_can_call;
    const until = data.do_not_disturb_until && new Date(data.do_not_disturb_until);
    $("do-not-disturb").checked = until ? until > new Date() : data.do_not_disturb;
    $("relay-only").checked = Boolean(data.relay_only);
    $("call-waiting").checked = Boolean(data.call_waiting);
    await loadBlocked();
  } catch {
    // A server without call settings: the panel stays as it is.
  }
}

async function saveCallSettings(change) {
  try {
    await api("/api/call-settings/", { method: "PATCH", body: change });
    const saved = {
      do_not_disturb: "Do not disturb is on: nothing will ring.",
      call_waiting: "Call waiting is on: a second call rings while you are in one.",
    };
    const said = Object.keys(change).find((key) => change[key] === true && saved[key]);
    notify(said ? saved[said] : "Call settings saved.");
  } catch (error) {
    notify(`Could not save your call settings: ${error.message}`, { error: true });
    await loadCallSettings();
  }
}

async function loadBlocked() {
  const { data } = await api("/api/call-blocks/");
  const list = $("blocked");
  list.replaceChildren(
    ...data.results.map(({ user }) => {
      const item = document.createElement("li");
      item.dataset.user = user.id;
      const name = document.createElement("span");
      name.textContent = nameOf(user);
      const unblock = document.createElement("button");
      unblock.type = "button";
      unblock.className = "link";
      unblock.textContent = "Unblock";
      unblock.setAttribute("aria-label", `Unblock ${nameOf(user)}`);
      unblock.addEventListener("click", async () => {
        await api(`/api/call-blocks/${encodeURIComponent(user.id)}/`, { method: "DELETE" }).catch(() => {});
        await loadBlocked();
      });
      item.append(name, unblock);
      return item;
    }),
  );
  if (data.results.length === 0) {
    const empty = document.createElement("li");
    empty.textContent = "Nobody.";
    list.replaceChildren(empty);
  }
}

async function blockUser(user) {
  try {
    await api("/api/call-blocks/", { method: "POST", body: { user_id: user.id } });
    notify(`${nameOf(user)} is blocked: their calls will not reach you.`);
    await loadBlocked();
  } catch (error) {
    notify(`Could not block ${nameOf(user)}: ${error.message}`, { error: true });
  }
}

function formatDuration(seconds) {
  const m = Math.floor(seconds / 60);
  const s = Math.floor(seconds % 60);
  return `${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}`;
}

// ---------------------------------------------------------------- the socket

function connect() {
  if (!state.token || state.socket) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = state.resumeFrom ? `&resume=${encodeURIComponent(state.resumeFrom)}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/notifications/?token=${encodeURIComponent(state.token)}${resume}`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.reconnectDelay = 1000;
    state.everOnline = true;
    setConnection("online");
  });
  socket.addEventListener("message", (message) => {
    try {
      handleEvent(JSON.parse(message.data));
    } catch (error) {
      console.error("[ringline] bad event", error);
    }
  });
  socket.addEventListener("close", (event) => {
    if (state.socket === socket) state.socket = null;
    setConnection(state.everOnline && state.token && event.code !== 1000 ? "reconnecting" : "offline");
    if (event.code === 4401) {
      notify("Your session has expired. Sign in again.", { error: true });
      signOut();
    } else if (state.token && event.code !== 1000) {
      setTimeout(connect, state.reconnectDelay);
      state.reconnectDelay = Math.min(state.reconnectDelay * 2, 10000);
    }
  });
}

function setConnection(status) {
  const pill = $("connection");
  pill.textContent = { online: "online", reconnecting: "Reconnecting…", offline: "offline" }[status];
  pill.classList.toggle("online", status === "online");
  pill.classList.toggle("reconnecting", status === "reconnecting");
}

function send(frame) {
  if (state.socket?.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
}

setInterval(() => send({ type: "ping" }), 25000);

const isCurrent = (event) => state.call && String(event.call_id) === String(state.call.id);

/// `<run>-<hex>` → [run, position]; ids with a "." are not stream positions.
function streamPosition(id) {
  const match = /^([0-9a-z]+)-([0-9a-f]+)$/.exec(id || "");
  return match ? [match[1], BigInt(`0x${match[2]}`)] : null;
}

function rememberPosition(id) {
  state.resumeFrom = id;
  sessionStorage.setItem("ringline.resume", id);
}

/// An SDP or candidate event replayed to a page that rebuilt its peer connection after a
/// reload: it was meant for the old one.
function meantForTheOldPeer(event) {
  if (!state.replayedUntil || !state.call?.freshPeer) return false;
  if (!["call.offer", "call.answer", "call.ice-candidate"].includes(event.type)) return false;
  const [position, until] = [streamPosition(event.event_id), streamPosition(state.replayedUntil)];
  return Boolean(position && until && position[0] === until[0] && position[1] <= until[1]);
}

function handleEvent(event) {
  if (event.event_id) {
    if (state.seenEvents.has(event.event_id)) return; // the same event on another socket
    state.seenEvents.add(event.event_id);
    if (streamPosition(event.event_id)) rememberPosition(event.event_id);
  }
  if (event.type === "connection.ack") return acknowledged(event);
  if (event.type === "resync") {
    // Some of what happened while we were away is gone: the ack we just got says where we stand.
    rememberPosition(event.resume_from);
    if (!Array.isArray(state.lastAck?.open_calls)) return notify("Reconnected; some updates may be missing.");
    return reconcile(state.lastAck.open_calls);
  }
  if (meantForTheOldPeer(event)) return;
  if (state.initiating && !state.call && event.call_id && event.type !== "call.incoming") {
    state.earlyEvents.push(event);
    return;
  }
  dispatch(event);
}

/// Replays the events that overtook our initiate response, now that we know our call's id.
function replayEarlyEvents() {
  for (const event of state.earlyEvents.splice(0)) {
    if (isCurrent(event)) dispatch(event);
  }
}

function acknowledged(ack) {
  state.lastAck = ack;
  const resumed = Boolean(state.resumeFrom);
  rememberPosition(ack.resume_from);
  // Without open_calls the server could not read our calls: keep what we have and let the
  // events (or the next connect) tell us, rather than ending a call that may be fine.
  if (!state.restoredOnLoad && Array.isArray(ack.open_calls)) {
    state.restoredOnLoad = true;
    if (resumed) state.replayedUntil = ack.resume_from;
    reconcile(ack.open_calls);
  }
  if (state.callOnOpen && !state.call) {
    const { peer, type } = state.callOnOpen;
    state.callOnOpen = null;
    startCall(peer, type);
  }
}

/// Brings this tab in line with the server's view of our calls: on page load (restore the
/// call this tab was in, or end it cleanly) and after a resync.
function reconcile(openCalls) {
  const open = openCalls[0];
  const saved = savedCall();
  if (state.call) {
    if (!open || String(open.id) !== String(state.call.id)) {
      endLocally("The call ended while you were offline.");
    } else if (open.status === "active" && state.call.role === "callee" && state.call.status === "ringing") {
      hangUpLocally();
      notify("Answered on another device.");
    }
    return;
  }
  if (!open) {
    if (saved) {
      sessionStorage.removeItem("ringline.call");
      notify(`Your call with ${saved.peerName} has ended.`);
      loadHistory();
    }
    return;
  }
  const outgoing = open.caller.id === state.me.id;
  const peer = outgoing ? open.receiver : open.caller;
  const mine = saved?.joined && String(saved.id) === String(open.id);
  const call = {
    id: String(open.id),
    role: outgoing ? "caller" : "callee",
    peerId: peer.id,
    peerName: state.contacts.get(peer.id)?.name || nameOf(peer),
    type: open.call_type,
    status: open.status === "ringing" ? "ringing" : "connecting",
  };
  if (!outgoing && open.status === "ringing" && state.answerOnOpen === call.id) {
    // Opened from the notification's Answer: this tab missed the caller's offer, so it
    // accepts over REST and offers a connection of its own, as a reloaded tab does.
    state.answerOnOpen = null;
    call.status = "connecting";
    api(`/api/calls/${call.id}/accept/`, { method: "POST", body: {} })
      .then(() => {
        state.call = call;
        saveCall({ joined: true });
        restoreCall(call);
      })
      .catch((error) => notify(`Could not answer: ${error.message}`, { error: true }));
  } else if (!outgoing && open.status === "ringing") {
    // It rings in every tab; the offer, if this tab had it before the reload, is kept.
    state.call = call;
    state.pendingOffer = String(saved?.id) === call.id ? saved.offer || null : null;
    startRinging();
    render();
    sayRinging(call);
  } else if (mine) {
    if (open.answered_at) call.answeredAt = Date.parse(open.answered_at);
    restoreCall(call);
  } else {
    notify(open.status === "ringing" ? `You are calling ${call.peerName} from another tab.` : `You are in a call with ${call.peerName} on another device.`);
  }
}

/// After a reload: new media and a new peer connection, offered to the other side, which
/// answers it on a fresh connection of its own (see acceptOffer).
async function restoreCall(call) {
  state.call = call;
  call.freshPeer = true;
  render();
  notify(`Restoring your call with ${call.peerName}…`);
  try {
    state.localStream = await getMedia(call.type);
    showLocal();
    const pc = await createPeer();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (state.call !== call) return;
    send({ type: "call.offer", call_id: call.id, call_type: call.type, offer: { type: offer.type, sdp: offer.sdp } });
  } catch (error) {
    if (state.call === call) failCall(`Could not restore the call: ${error.message}`);
  }
}

function dispatch(event) {
  // The waiting call stopped ringing (its caller gave up, it was declined or answered
  // elsewhere, or it was missed): its banner goes.
  if (isWaiting(event) && ["call.cancelled", "call.missed", "call.rejected", "call.accepted", "call.end"].includes(event.type)) {
    state.waiting = null;
    renderWaiting();
    return;
  }
  switch (event.type) {
    case "call.incoming":
      // A second call while we are in one: only with call waiting, and shown beside it.
      if (state.call) return event.waiting && state.call.status !== "ringing" ? callWaiting(event) : undefined;
      state.call = {
        id: event.call_id,
        role: "callee",
        peerId: event.caller_id,
        peerName: state.contacts.get(event.caller_id)?.name || event.caller_username || event.caller_id,
        type: event.call_type,
        status: "ringing",
      };
      state.pendingOffer = null;
      state.pendingCandidates = [];
      saveCall({ joined: false });
      startRinging();
      render();
      $("accept").focus();
      sayRinging(state.call);
      break;
    case "call.ringing":
      // One of the callee's devices shows our call: it really rings.
      if (!isCurrent(event) || state.call.role !== "caller") return;
      state.call.rang = true;
      render();
      break;
    case "call.offer":
      if (isWaiting(event)) {
        state.waiting.offer = event.offer;
        return;
      }
      if (!isCurrent(event)) return;
      if (state.pc && state.pc.signalingState !== "closed" && state.call.status !== "ringing") {
        acceptOffer(event.offer);
      } else {
        state.pendingOffer = event.offer;
        if (state.call.role === "callee" && state.call.status === "ringing") saveCall({ offer: event.offer });
        for (const resolve of state.offerWaiters.splice(0)) resolve(event.offer);
      }
      break;
    case "call.answer":
      if (!isCurrent(event)) return;
      if (state.call.role === "caller" && state.call.status === "ringing") {
        state.call.status = "connecting";
        state.call.acceptedAt ??= Date.now();
        render();
      }
      if (event.answer) state.call.answered = true;
      // The answer to our offer: the first one, an ICE restart, or a restore after a reload.
      if (event.answer && state.pc?.signalingState === "have-local-offer") {
        state.pc
          .setRemoteDescription(event.answer)
          .then(flushCandidates)
          .catch((error) => failCall(`Could not use the answer: ${error.message}`));
      }
      break;
    case "call.media-state":
      if (!isCurrent(event)) return;
      state.call.peerMedia = { audio: event.audio !== false, video: event.video !== false, screen: event.screen === true };
      render();
      break;
    case "call.accepted":
      if (!isCurrent(event)) return;
      state.call.acceptedAt ??= Date.now();
      // Accepted without an SDP answer (over REST, from a tab that missed our offer): that tab
      // offers a connection of its own, and ours yields to it (acceptOffer).
      if (state.call.role === "caller" && !state.call.answered) state.call.awaitingOffer = true;
      if (state.call.role === "callee" && state.call.status === "ringing") {
        stopRinging();
        hangUpLocally();
        notify("Answered on another device.");
      }
      break;
    case "call.rejected":
      if (!isCurrent(event)) return;
      if (state.call.role === "caller") {
        $("outgoing-state").textContent = `${state.call.peerName} declined.`;
        endLocally(`${state.call.peerName} declined the call.`, 1500);
      } else {
        stopRinging();
        hangUpLocally();
        notify("Declined on another device.");
      }
      break;
    case "call.cancelled":
      if (!isCurrent(event)) return;
      stopRinging();
      endLocally(state.call.role === "callee" ? `Missed call from ${state.call.peerName}.` : "Call cancelled.");
      break;
    case "call.missed":
      if (!isCurrent(event)) return;
      stopRinging();
      endLocally(state.call.role === "caller" ? `${state.call.peerName} did not answer.` : `Missed call from ${state.call.peerName}.`);
      break;
    case "call.end":
      if (!isCurrent(event)) return;
      // Sent so that old clients' other tabs stop ringing: it ends this tab's ringing, never a
      // call this tab is in.
      if (event.end_reason === "answered_elsewhere" && state.call.status !== "ringing") return;
      stopRinging();
      if (event.end_reason === "switched_call") {
        endLocally(`${state.call.peerName} took another call · ${formatDuration(event.duration_seconds ?? 0)}`);
      } else if (event.status === "ended") {
        endLocally(`Call ended · ${formatDuration(event.duration_seconds ?? 0)}`);
      } else if (state.call?.status !== "ended") {
        endLocally(event.status === "missed" ? "No answer." : "Call ended.");
      }
      break;
    case "call.ice-candidate":
      if (isWaiting(event) && event.candidate) return state.waiting.candidates.push(event.candidate);
      if (!isCurrent(event) || !event.candidate) return;
      if (state.pc?.remoteDescription) {
        state.pc.addIceCandidate(event.candidate).catch((error) => console.warn("[ringline] candidate", error));
      } else {
        state.pendingCandidates.push(event.candidate); // until the remote description is set
      }
      break;
    case "notification.created":
      if (event.payload?.verb?.startsWith("missed_")) loadHistory();
      break;
    case "error":
      // A refusal about a call this tab has already left or is leaving (say, a candidate that
      // crossed the callee's decline) is stale; only errors about a live call or none are news.
      if (event.call_id && (!isCurrent(event) || state.call.status === "ended")) {
        console.warn("[ringline] stale error", event.code);
        return;
      }
      notify(event.detail || "The server refused that.", { error: true });
      break;
    default:
      break; // pong, typing: nothing to show
  }
}

// ---------------------------------------------------------------- media and WebRTC

async function getMedia(type) {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: type === "video" });
  } catch (error) {
    const denied = error.name === "NotAllowedError" || error.name === "SecurityError";
    throw new Error(
      denied
        ? "Camera or microphone access was denied. Allow it in your browser to make calls."
        : `No ${type === "video" ? "camera or microphone" : "microphone"} available (${error.name}).`,
    );
  }
}

async function createPeer() {
  let iceServers = [];
  let iceTransportPolicy = "all";
  try {
    const { data } = await api("/api/turn/ice-servers/");
    iceServers = data.ice_servers;
    // Relay-only (the user's choice or the server's): our address never reaches the other side.
    if (data.ice_transport_policy === "relay") iceTransportPolicy = "relay";
  } catch {
    // Without ICE servers, host candidates still connect on a local network.
  }
  // The call may have ended while we fetched the ICE servers; its media is gone with it.
  if (!state.localStream) throw new Error("the call has ended");
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy });
  state.pc = pc;
  // What this side gathered, to say where a call that never connects broke.
  const gathered = new Set();
  const relayOffered = iceServers.some((server) => server.username);
  for (const track of state.localStream.getTracks()) pc.addTrack(track, state.localStream);
  pc.addEventListener("icecandidate", (event) => {
    if (event.candidate?.type) gathered.add(event.candidate.type);
    // Candidates keep trickling after a decline or hang-up; the server would refuse them.
    const live = state.call && state.pc === pc && state.call.status !== "ended";
    if (event.candidate && live) send({ type: "call.ice-candidate", call_id: state.call.id, candidate: event.candidate.toJSON() });
  });
  pc.addEventListener("track", (event) => {
    // One stream for everything the other side sends: a video added mid-call (a voice call
    // turned video, a shared screen) may come without a stream of its own.
    const stream = state.remoteStream && state.remotePc === pc ? state.remoteStream : new MediaStream();
    state.remoteStream = stream;
    state.remotePc = pc;
    if (!stream.getTracks().includes(event.track)) stream.addTrack(event.track);
    event.track.addEventListener("unmute", () => render());
    for (const element of [$("remote-video"), $("remote-audio")]) {
      if (element.srcObject !== stream) element.srcObject = stream;
    }
    render();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (!state.call || state.pc !== pc) return;
    const call = state.call;
    if (pc.connectionState === "connected") {
      const first = !call.everConnected;
      call.everConnected = true;
      if (first) call.setupMs = Date.now() - (call.acceptedAt ?? Date.now());
      startQuality(pc);
      call.status = "connected";
      clearPeerDrop();
      if (call.freshPeer) notify("");
      startTimer();
      render();
      if (first) sendMediaState();
    } else if (pc.connectionState === "disconnected" || pc.connectionState === "failed") {
      if (call.everConnected) peerDropped(pc);
      else if (pc.connectionState === "failed") {
        failCall(whyNoConnection(gathered, relayOffered, iceTransportPolicy), "ice_failed");
      }
    }
  });
  return pc;
}

/// Where a call that never connected broke, in a sentence: no relay could be had (the TURN
/// server unreachable, or its credentials refused), or every path between the two failed.
function whyNoConnection(gathered, relayOffered, policy) {
  if ((relayOffered || policy === "relay") && !gathered.has("relay")) {
    return "The call could not connect: the relay server could not be reached or refused us, so there was no way through.";
  }
  if (!relayOffered) {
    return "The call could not connect: the two of you could not reach each other directly, and no relay server is set up.";
  }
  return "The call could not connect: no path between the two of you worked, not even through the relay.";
}

/// The other person's connection dropped mid-call (their network, a closed tab, a reload).
/// Show it, let the caller restart ICE after a moment, and give up only if it stays down.
function peerDropped(pc) {
  const call = state.call;
  if (state.peerDrop) return;
  call.status = "peer-dropped";
  render();
  const restart = setTimeout(async () => {
    if (state.pc !== pc || call.role !== "caller" || pc.connectionState === "connected") return;
    try {
      const offer = await pc.createOffer({ iceRestart: true });
      await pc.setLocalDescription(offer);
      send({ type: "call.offer", call_id: call.id, call_type: call.type, offer: { type: offer.type, sdp: offer.sdp } });
    } catch (error) {
      console.warn("[ringline] ICE restart", error);
    }
  }, ICE_RESTART_AFTER_MS);
  const giveUp = setTimeout(() => {
    if (state.call === call && call.status === "peer-dropped") {
      failCall(`The connection to ${call.peerName} was lost.`, "ice_failed");
    }
  }, PEER_GIVE_UP_MS);
  state.peerDrop = { timers: [restart, giveUp] };
}

/// A MOS from 1 to 4.5 (the server's simplified E-model, docs/api.md).
function mos(rttMs, jitterMs, loss) {
  const delay = rttMs / 2 + jitterMs * 2;
  const delayEffect = delay > 160 ? (delay - 120) / 10 : delay / 40;
  const r = Math.min(100, Math.max(0, 100 - delayEffect - loss * 100 * 2.5));
  return Math.min(4.5, Math.max(1, 1 + 0.035 * r + 0.000007 * r * (r - 60) * (100 - r)));
}

/// One reading of `pc`'s statistics, the loss and bitrates over the interval since `previous`.
async function readQuality(pc, previous) {
  const stats = await pc.getStats();
  let pair = null;
  let inbound = null;
  const byId = new Map();
  stats.forEach((entry) => {
    byId.set(entry.id, entry);
    // Audio decides: it is what a call cannot do without.
    if (entry.type === "inbound-rtp" && (entry.kind === "audio" || !inbound)) inbound = entry;
  });
  stats.forEach((entry) => {
    if (entry.type === "transport" && entry.selectedCandidatePairId) pair = byId.get(entry.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((entry) => {
    if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") pair = entry;
  });
  if (!pair) return null;
  const local = byId.get(pair.localCandidateId);
  const remote = byId.get(pair.remoteCandidateId);
  const now = performance.now();
  const counts = {
    at: now,
    lost: inbound?.packetsLost ?? 0,
    received: inbound?.packetsReceived ?? 0,
    bytesIn: pair.bytesReceived ?? 0,
    bytesOut: pair.bytesSent ?? 0,
  };
  const report = {};
  if (typeof pair.currentRoundTripTime === "number") report.rtt_ms = Math.round(pair.currentRoundTripTime * 1000 * 10) / 10;
  if (typeof inbound?.jitter === "number") report.jitter_ms = Math.round(inbound.jitter * 1000 * 10) / 10;
  if (previous) {
    const lost = Math.max(0, counts.lost - previous.lost);
    const received = Math.max(0, counts.received - previous.received);
    if (lost + received > 0) report.packet_loss = Math.round((lost / (lost + received)) * 10000) / 10000;
    const seconds = (now - previous.at) / 1000;
    if (seconds > 0) {
      report.bitrate_in_kbps = Math.round(((counts.bytesIn - previous.bytesIn) * 8) / seconds / 100) / 10;
      report.bitrate_out_kbps = Math.round(((counts.bytesOut - previous.bytesOut) * 8) / seconds / 100) / 10;
    }
  }
  const types = ["host", "srflx", "prflx", "relay"];
  if (types.includes(local?.candidateType)) report.local_candidate_type = local.candidateType;
  if (types.includes(remote?.candidateType)) report.remote_candidate_type = remote.candidateType;
  if (local?.protocol === "udp" || local?.protocol === "tcp") report.protocol = local.protocol;
  return { report, counts };
}

function isPoor(report) {
  const rtt = report.rtt_ms ?? 0;
  const jitter = report.jitter_ms ?? 0;
  const loss = report.packet_loss ?? 0;
  return rtt > POOR_RTT_MS || jitter > POOR_JITTER_MS || loss > POOR_LOSS || mos(rtt, jitter, loss) < POOR_MOS;
}

/// Starts sampling `pc` for the current call (again after an ICE restart or a new connection).
function startQuality(pc) {
  const call = state.call;
  if (state.quality?.pc === pc) return;
  const carried = state.quality?.callId === call.id ? state.quality : null;
  clearInterval(carried?.sampler);
  const quality = {
    callId: call.id,
    pc,
    last: null,
    samples: carried?.samples ?? [],
    reported: carried?.reported ?? false,
    lastSent: carried?.lastSent ?? 0,
    lastReport: carried?.lastReport ?? null,
    sent: carried?.sent ?? null,
  };
  state.quality = quality;
  quality.sampler = setInterval(() => sampleQuality(quality), QUALITY_SAMPLE_MS);
}

async function sampleQuality(quality) {
  if (state.quality !== quality || quality.pc.connectionState === "closed") return;
  let reading;
  try {
    reading = await readQuality(quality.pc, quality.last?.counts);
  } catch {
    return;
  }
  if (!reading || state.quality !== quality) return;
  quality.last = reading;
  quality.lastReport = reading.report;
  quality.samples = [...quality.samples, isPoor(reading.report)].slice(-5);
  $("poor-connection").hidden = quality.samples.filter(Boolean).length < 3;
  const due = !quality.reported ? reading.report.rtt_ms !== undefined : Date.now() - quality.lastSent >= QUALITY_REPORT_MS;
  if (due) sendQuality(quality, reading.report);
}

function sendQuality(quality, report) {
  const body = { ...report };
  if (!quality.reported && state.call?.id === quality.callId && state.call.setupMs !== undefined) {
    body.setup_ms = Math.min(600000, Math.max(0, state.call.setupMs));
  }
  if (Object.keys(body).length === 0) return;
  quality.sent = report;
  quality.reported = true;
  quality.lastSent = Date.now();
  // Fire and forget: a lost report costs nothing but a sample.
  api(`/api/calls/${quality.callId}/quality/`, { method: "POST", body }).catch(() => {});
}

/// The call is over here: the last reading goes out as the final report.
function stopQuality() {
  const quality = state.quality;
  if (!quality) return;
  clearInterval(quality.sampler);
  state.quality = null;
  $("poor-connection").hidden = true;
  // A reading newer than the last report goes out; the same numbers twice would skew the means.
  if (quality.lastReport && quality.lastReport !== quality.sent) sendQuality(quality, quality.lastReport);
}

function clearPeerDrop() {
  for (const timer of state.peerDrop?.timers || []) clearTimeout(timer);
  state.peerDrop = null;
}

const fingerprintOf = (sdp) => /a=fingerprint:(\S+ \S+)/.exec(sdp || "")?.[1] || null;

/// An offer during the call: a renegotiation or ICE restart of the same connection, or, when
/// it comes from a new connection (the other side reloaded: a new DTLS fingerprint), a fresh
/// start that needs a fresh connection here too. When both sides offer at once, the caller
/// keeps its own offer and the callee yields.
async function acceptOffer(offer) {
  const call = state.call;
  const pc = state.pc;
  const fresh = fingerprintOf(offer.sdp) !== fingerprintOf(pc.remoteDescription?.sdp);
  if (pc.signalingState === "have-local-offer" && call.role === "caller" && !call.awaitingOffer) return;
  call.awaitingOffer = false;
  try {
    if (!fresh && pc.signalingState === "stable") return await renegotiate(offer);
    // Both offered a change at once (say, both turned their camera on): ours is rolled back,
    // theirs answered, and ours offered again after.
    if (!fresh && pc.signalingState === "have-local-offer") {
      call.offerAgain = true;
      return await renegotiate(offer);
    }
    pc.close();
    state.pc = null;
    state.pendingCandidates = [];
    clearPeerDrop();
    const next = await createPeer();
    if (state.call !== call) return next.close();
    await next.setRemoteDescription(offer);
    await flushCandidates();
    const answer = await next.createAnswer();
    await next.setLocalDescription(answer);
    send({ type: "call.answer", call_id: call.id, answer: { type: answer.type, sdp: answer.sdp } });
  } catch (error) {
    if (state.call === call) failCall(`Could not reconnect the call: ${error.message}`);
  }
}

/// Tells the other side whether our microphone and camera are on.
function sendMediaState() {
  const call = state.call;
  if (!call || !state.localStream) return;
  const on = (kind) =>
    state.localStream.getTracks().some((track) => track.kind === kind && track.enabled && track.readyState === "live");
  const screen = Boolean(call.screen);
  send({ type: "call.media-state", call_id: call.id, audio: on("audio"), video: screen || on("video"), screen });
}

async function flushCandidates() {
  const queued = state.pendingCandidates.splice(0);
  for (const candidate of queued) {
    await state.pc.addIceCandidate(candidate).catch((error) => console.warn("[ringline] candidate", error));
  }
}

async function renegotiate(offer) {
  const call = state.call;
  await state.pc.setRemoteDescription(offer);
  const answer = await state.pc.createAnswer();
  await state.pc.setLocalDescription(answer);
  send({ type: "call.answer", call_id: call.id, answer: { type: answer.type, sdp: answer.sdp } });
  if (call.offerAgain) {
    call.offerAgain = false;
    await offerChange();
  }
}

/// Offers a change of our media (a camera or a screen added) on the connection we have: the
/// other side answers it through the same path as an ICE restart.
async function offerChange() {
  const call = state.call;
  const pc = state.pc;
  if (!call || !pc || pc.signalingState !== "stable") {
    if (call) call.offerAgain = true; // after the exchange under way
    return;
  }
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ type: "call.offer", call_id: call.id, call_type: call.type, offer: { type: offer.type, sdp: offer.sdp } });
}

/// Sends `track` (a camera or a screen) as our video: on the video line the other side opened
/// if there is one we do not send on yet, else on a new one; either way offered again.
async function sendVideo(track) {
  const pc = state.pc;
  const idle = pc
    .getTransceivers()
    .find((transceiver) => transceiver.receiver.track?.kind === "video" && !transceiver.sender.track && !transceiver.stopped);
  if (idle) {
    await idle.sender.replaceTrack(track);
    idle.sender.setStreams?.(state.localStream);
    idle.direction = "sendrecv";
  } else {
    pc.addTrack(track, state.localStream);
  }
  await offerChange();
}

/// The video we send now: a shared screen, or the camera's track; `null` for none.
const videoSender = () => state.pc?.getSenders().find((sender) => sender.track?.kind === "video") || null;

/// The camera button: on and off in a call that has a camera; in one that has none yet (a
/// voice call), turns it on, and the call is a video call from now on for both sides.
async function toggleCamera(button) {
  const call = state.call;
  if (!call) return;
  if (state.localStream?.getVideoTracks().length) {
    toggleTracks("video", button, ["Camera off", "Camera on"]);
    return;
  }
  if (!state.pc) return;
  let camera;
  try {
    [camera] = (await navigator.mediaDevices.getUserMedia({ video: true })).getVideoTracks();
  } catch (error) {
    return notify(`Could not turn the camera on: ${error.message}`, { error: true });
  }
  if (state.call !== call || !state.localStream) return camera.stop();
  state.localStream.addTrack(camera);
  if (call.screen) {
    call.cameraTrack = camera; // shown again when the screen share stops
  } else {
    await sendVideo(camera);
  }
  showLocal();
  render();
  sendMediaState();
}

/// The screen button: shares a screen (or a window, or a tab) in place of our camera, or as
/// our video in a voice call; again stops it and brings the camera back.
async function toggleScreen() {
  const call = state.call;
  if (!call || !state.pc) return;
  if (call.screen) return stopScreen();
  let screen;
  try {
    [screen] = (await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false })).getVideoTracks();
  } catch (error) {
    if (error.name !== "NotAllowedError") notify(`Could not share the screen: ${error.message}`, { error: true });
    return;
  }
  if (state.call !== call || !state.pc) return screen.stop();
  call.screen = screen;
  // Stopped from the browser's own "Stop sharing" bar too.
  screen.addEventListener("ended", () => {
    if (state.call === call && call.screen === screen) stopScreen();
  });
  const sender = videoSender();
  if (sender) {
    call.cameraTrack = sender.track;
    await sender.replaceTrack(screen);
  } else {
    call.cameraTrack = null;
    await sendVideo(screen);
  }
  $("local-video").srcObject = new MediaStream([screen]);
  render();
  sendMediaState();
}

function stopScreen() {
  const call = state.call;
  const screen = call?.screen;
  if (!screen) return;
  call.screen = null;
  screen.stop();
  const sender = state.pc?.getSenders().find((candidate) => candidate.track === screen);
  // Back to the camera, or to sending no video (the line stays for the next share).
  sender?.replaceTrack(call.cameraTrack || null).catch(() => {});
  call.cameraTrack = null;
  showLocal();
  render();
  sendMediaState();
}

function showLocal() {
  $("local-video").srcObject = state.localStream;
}

async function startCall(peerId, type) {
  // A second click while the first is still starting (a double click) is ignored: it would
  // place a second call, which the server refuses, and undoing that would stop our media.
  if (state.initiating) return;
  if (state.call) return notify("You are already in a call.", { error: true });
  const peerName = state.contacts.get(peerId)?.name || peerId;
  notify("");
  state.initiating = true;
  state.earlyEvents = [];
  const giveUp = (message) => {
    state.initiating = false;
    state.earlyEvents = [];
    stopMedia();
    notify(message, { error: true });
  };
  try {
    state.localStream = await getMedia(type);
  } catch (error) {
    return giveUp(error.message);
  }
  let response;
  try {
    response = await api("/api/calls/initiate/", { method: "POST", body: { receiver_id: peerId, call_type: type } });
  } catch (error) {
    const messages = {
      user_busy: `${peerName} is on another call.`,
      caller_busy: "You are already in a call.",
      receiver_not_found: `There is no user "${peerId}".`,
      self_call: "You cannot call yourself.",
      call_not_allowed: `${peerName} does not take calls from you.`,
    };
    return giveUp(messages[error.code] || error.message);
  }
  const call = response.data;
  if (response.status === 200) {
    // Glare: they were calling us at that moment; our attempt answered their call. Answering
    // their offer now is relayed to them as on any answered call.
    state.call = { id: String(call.id), role: "callee", peerId, peerName, type: call.call_type, status: "ringing" };
    state.initiating = false;
    stopRinging();
    replayEarlyEvents();
    return answerCall();
  }
  const ours = { id: String(call.id), role: "caller", peerId, peerName, type, status: "ringing" };
  state.call = ours;
  saveCall({ joined: true });
  state.initiating = false;
  state.pendingCandidates = [];
  render();
  showLocal();
  replayEarlyEvents();
  // Setting up the peer takes a while; the callee may decline before or during it.
  const abandoned = () => state.call !== ours || ours.status === "ended";
  if (abandoned()) return;
  try {
    const pc = await createPeer();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    if (abandoned()) {
      if (state.call !== ours && state.pc === pc) {
        pc.close(); // hangUpLocally ran before this peer existed
        state.pc = null;
      }
      return;
    }
    send({ type: "call.offer", call_id: ours.id, call_type: type, offer: { type: offer.type, sdp: offer.sdp } });
  } catch (error) {
    if (state.call === ours) failCall(`Could not start the call: ${error.message}`);
  }
}

function waitForOffer() {
  if (state.pendingOffer) return Promise.resolve(state.pendingOffer);
  return new Promise((resolve, reject) => {
    state.offerWaiters.push(resolve);
    setTimeout(() => reject(new Error("the caller's offer did not arrive")), 15000);
  });
}

async function answerCall() {
  const call = state.call;
  if (!call) return;
  stopRinging();
  call.status = "connecting";
  call.acceptedAt = Date.now();
  saveCall({ joined: true, offer: undefined });
  render();
  try {
    state.localStream = await getMedia(call.type);
  } catch (error) {
    notify(error.message, { error: true });
    return declineCall();
  }
  showLocal();
  try {
    const pc = await createPeer();
    await pc.setRemoteDescription(await waitForOffer());
    await flushCandidates();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    // The answer accepts a ringing call (or, after glare, just answers the offer).
    send({ type: "call.answer", call_id: call.id, answer: { type: answer.type, sdp: answer.sdp } });
  } catch (error) {
    failCall(`Could not answer: ${error.message}`);
  }
}

async function declineCall() {
  const call = state.call;
  if (!call) return;
  stopRinging();
  hangUpLocally();
  await api(`/api/calls/${call.id}/reject/`, { method: "POST", body: {} }).catch(() => {});
  loadHistory();
}

/// Hang up or cancel: tell the other side at once over the socket, then make sure over REST.
async function hangUp() {
  const call = state.call;
  if (!call) return;
  send({ type: "call.end", call_id: call.id });
  const seconds = state.call?.answeredAt ? (Date.now() - state.call.answeredAt) / 1000 : 0;
  endLocally(call.status === "ringing" ? "Call cancelled." : `Call ended · ${formatDuration(seconds)}`);
  await api(`/api/calls/${call.id}/end/`, { method: "POST", body: {} }).catch(() => {});
  loadHistory();
}

/// Ends the call because something broke; `reason` (ice_failed, user_media_failed) is
/// recorded as the call's end_reason.
function failCall(message, reason) {
  const call = state.call;
  if (call) {
    // The socket carries the reason; the REST end (which records a plain hang-up) is only the
    // safety net, sent once the socket's end has surely landed (ending an ended call changes
    // nothing). Sent together, the REST end could win the race and lose the reason.
    const endOverRest = () => api(`/api/calls/${call.id}/end/`, { method: "POST", body: {} }).catch(() => {});
    if (state.socket?.readyState === WebSocket.OPEN) {
      send(reason ? { type: "call.end", call_id: call.id, reason } : { type: "call.end", call_id: call.id });
      setTimeout(endOverRest, 2000);
    } else {
      endOverRest();
    }
  }
  endLocally(message, 0, { error: true });
}

function endLocally(message, delay = 0, { error = false } = {}) {
  if (state.call) state.call.status = "ended";
  notify(message, { error });
  setTimeout(() => {
    hangUpLocally();
    loadHistory();
  }, delay);
}

function stopMedia() {
  state.localStream?.getTracks().forEach((track) => track.stop());
  state.localStream = null;
}

function hangUpLocally() {
  stopRinging();
  clearPeerDrop();
  stopQuality();
  sessionStorage.removeItem("ringline.call");
  clearInterval(state.timer);
  state.timer = null;
  state.pc?.close();
  state.pc = null;
  state.call?.screen?.stop();
  state.remoteStream = null;
  stopMedia();
  state.call = null;
  state.pendingOffer = null;
  state.pendingCandidates = [];
  for (const video of [$("remote-video"), $("local-video"), $("remote-audio")]) video.srcObject = null;
  $("mute").setAttribute("aria-pressed", "false");
  $("camera").setAttribute("aria-pressed", "false");
  // A call waiting when ours ended rings on as an ordinary incoming call.
  const waiting = state.waiting;
  state.waiting = null;
  renderWaiting();
  if (waiting) {
    state.call = { id: waiting.id, role: "callee", peerId: waiting.peerId, peerName: waiting.peerName, type: waiting.type, status: "ringing" };
    state.pendingOffer = waiting.offer;
    state.pendingCandidates = waiting.candidates;
    saveCall({ joined: false });
    startRinging();
  }
  render();
}

function startTimer() {
  if (state.timer) return;
  state.call.answeredAt ??= Date.now();
  const tick = () => {
    if (state.call?.answeredAt) $("call-timer").textContent = formatDuration((Date.now() - state.call.answeredAt) / 1000);
  };
  tick();
  state.timer = setInterval(tick, 500);
}

function toggleTracks(kind, button, labels) {
  const pressed = button.getAttribute("aria-pressed") !== "true";
  state.localStream?.getTracks().filter((track) => track.kind === kind).forEach((track) => (track.enabled = !pressed));
  button.setAttribute("aria-pressed", String(pressed));
  button.textContent = pressed ? labels[1] : labels[0];
  sendMediaState();
}

// ---------------------------------------------------------------- ringing

function startRinging() {
  stopRinging();
  try {
    const audio = new AudioContext();
    const gain = audio.createGain();
    gain.gain.value = 0;
    gain.connect(audio.destination);
    const tone = audio.createOscillator();
    tone.frequency.value = 440;
    tone.connect(gain);
    tone.start();
    // Two short rings, then a pause, like a phone.
    const pattern = () => {
      const t = audio.currentTime;
      for (const offset of [0, 0.5]) {
        gain.gain.setValueAtTime(0.15, t + offset);
        gain.gain.setValueAtTime(0, t + offset + 0.35);
      }
    };
    pattern();
    const interval = setInterval(pattern, 2500);
    state.ringer = { audio, interval };
  } catch {
    state.ringer = null; // no audio: the dialog still shows
  }
}

const isWaiting = (event) => state.waiting && String(event.call_id) === String(state.waiting.id);

/// A second call rings while we are in one (call waiting): shown over the call, with Answer
/// (which ends the call we are in) and Decline; its offer and candidates are kept for it.
function callWaiting(event) {
  if (state.waiting) return;
  state.waiting = {
    id: String(event.call_id),
    peerId: event.caller_id,
    peerName: state.contacts.get(event.caller_id)?.name || event.caller_username || event.caller_id,
    type: event.call_type,
    offer: null,
    candidates: [],
  };
  renderWaiting();
  sayRinging(state.waiting);
}

function renderWaiting() {
  const waiting = state.waiting;
  $("waiting").hidden = !waiting;
  if (waiting) $("waiting-title").textContent = `${waiting.peerName} is calling (${waiting.type === "video" ? "video" : "voice"})`;
}

/// Answers the waiting call: the server ends the call we are in (`switched_call`) when it takes
/// this answer, so this tab leaves it without hanging up.
function answerWaiting() {
  const waiting = state.waiting;
  if (!waiting) return;
  state.waiting = null;
  renderWaiting();
  if (state.call) {
    state.call.status = "ended";
    hangUpLocally();
  }
  state.call = { id: waiting.id, role: "callee", peerId: waiting.peerId, peerName: waiting.peerName, type: waiting.type, status: "ringing" };
  state.pendingOffer = waiting.offer;
  state.pendingCandidates = waiting.candidates;
  saveCall({ joined: false });
  answerCall();
}

async function declineWaiting() {
  const waiting = state.waiting;
  if (!waiting) return;
  state.waiting = null;
  renderWaiting();
  await api(`/api/calls/${waiting.id}/reject/`, { method: "POST", body: {} }).catch(() => {});
  loadHistory();
}

/// Tells the caller that this device shows their call (the server passes it on once per call).
function sayRinging(call) {
  send({ type: "call.ringing", call_id: call.id });
}

function stopRinging() {
  if (!state.ringer) return;
  clearInterval(state.ringer.interval);
  state.ringer.audio.close().catch(() => {});
  state.ringer = null;
}

// ---------------------------------------------------------------- rendering

function render() {
  const signedIn = Boolean(state.token && state.me);
  $("sign-in").hidden = signedIn;
  $("home").hidden = !signedIn;
  $("me").hidden = !signedIn;
  if (signedIn) $("me-name").textContent = state.me.name;

  const call = state.call;
  const ringingIn = call?.role === "callee" && call.status === "ringing";
  const ringingOut = call?.role === "caller" && call.status === "ringing";
  const inCall = call && !ringingIn && !ringingOut && call.status !== "ended";
  $("incoming").hidden = !ringingIn;
  $("outgoing").hidden = !ringingOut;
  $("in-call").hidden = !inCall;
  if (!call) return;
  const kind = call.type === "video" ? "video" : "voice";
  document.title = ringingIn ? `Incoming call from ${call.peerName}` : "Ringline";
  $("incoming-title").textContent = `Incoming ${kind} call`;
  $("incoming-from").textContent = `${call.peerName} is calling you`;
  $("incoming-avatar").textContent = initials(call.peerName);
  // "Ringing…" once one of their devices says it shows the call; "Calling…" until then.
  $("outgoing-title").textContent = `${call.rang ? "Ringing" : "Calling"} ${call.peerName}…`;
  $("outgoing-state").textContent = call.rang ? "Ringing…" : "Calling…";
  $("outgoing-avatar").textContent = initials(call.peerName);
  $("call-peer").textContent = call.peerName;
  $("call-avatar").textContent = initials(call.peerName);
  const media = call.peerMedia || { audio: true, video: kind === "video", screen: false };
  const sendingVideo = Boolean(call.screen) || Boolean(state.localStream?.getVideoTracks().length);
  // A voice call shows video once either side turns a camera on or shares a screen.
  const withVideo = kind === "video" || sendingVideo || media.video;
  $("in-call").classList.toggle("voice", !withVideo);
  $("camera").textContent = state.localStream?.getVideoTracks().length
    ? $("camera").getAttribute("aria-pressed") === "true" ? "Camera on" : "Camera off"
    : "Turn camera on";
  $("screen").textContent = call.screen ? "Stop sharing" : "Share screen";
  $("screen").setAttribute("aria-pressed", String(Boolean(call.screen)));
  $("screen").hidden = !navigator.mediaDevices?.getDisplayMedia;
  $("call-state").textContent =
    call.status === "connected" ? "Connected" : call.status === "peer-dropped" ? `${call.peerName}'s connection dropped. Reconnecting…` : "Connecting…";
  $("in-call").classList.toggle("peer-dropped", call.status === "peer-dropped");
  if (!call.answeredAt) $("call-timer").textContent = "00:00";
  const cameraOff = withVideo && !media.video;
  const off = [!media.audio && "muted", cameraOff && "camera off", media.screen && "sharing their screen"].filter(Boolean);
  $("peer-media").textContent = off.length ? `${call.peerName}: ${off.join(", ")}` : "";
  $("peer-media").hidden = off.length === 0;
  $("in-call").classList.toggle("peer-screen", Boolean(media.screen));
  $("in-call").classList.toggle("peer-camera-off", cameraOff);
}

// ---------------------------------------------------------------- wiring

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token-input").value.trim();
  if (token) signIn(token);
});
$("sign-out").addEventListener("click", signOut);
$("dial").addEventListener("submit", (event) => {
  event.preventDefault();
  startCall($("dial-id").value.trim(), event.submitter?.value === "voice" ? "voice" : "video");
});
$("who-can-call").addEventListener("change", (event) => saveCallSettings({ who_can_call: event.currentTarget.value }));
$("do-not-disturb").addEventListener("change", (event) =>
  saveCallSettings({ do_not_disturb: event.currentTarget.checked, do_not_disturb_until: null }),
);
$("relay-only").addEventListener("change", (event) => saveCallSettings({ relay_only: event.currentTarget.checked }));
$("call-waiting").addEventListener("change", (event) => saveCallSettings({ call_waiting: event.currentTarget.checked }));
$("waiting-accept").addEventListener("click", answerWaiting);
$("waiting-decline").addEventListener("click", declineWaiting);
$("accept").addEventListener("click", () => answerCall());
$("decline").addEventListener("click", declineCall);
$("cancel").addEventListener("click", hangUp);
$("hang-up").addEventListener("click", hangUp);
$("mute").addEventListener("click", (event) => toggleTracks("audio", event.currentTarget, ["Mute", "Unmute"]));
$("camera").addEventListener("click", (event) => toggleCamera(event.currentTarget));
$("screen").addEventListener("click", toggleScreen);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.call?.role === "callee" && state.call.status === "ringing") declineCall();
});

// For tests and the curious: the live state and peer connection.
window.ringline = { state };

openedToAnswer().then((signedIn) => {
  if (signedIn) return;
  if (state.token && state.me) {
    start();
    enableBackgroundRinging();
  } else {
    showSignIn();
  }
});
