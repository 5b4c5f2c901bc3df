// Ringline's service worker: rings the browser when no tab of the app is visible.
//
// The server sends a Web Push message when a call rings the signed-in user (docs/webhooks.md,
// "Web Push"): `{"type": "call.ringing", "call": <the REST call>, "expires_at"}`, and one with the same topic
// when it stops ringing: `{"type": "call.accepted" | "call.rejected" | "call.cancelled" |
// "call.missed", "call_id"}`. A ring shows a notification with Answer and Decline; the end
// takes it down. Answer opens (or focuses) the app on `/?answer=<call id>&user=<user id>`,
// which signs in with the session the page left in IndexedDB and answers; Decline rejects the
// call over REST with that session, without opening anything.
//
// A call the user missed (nobody answered, or the caller gave up) comes as its end with
// `"missed": true`, `caller`, `call_type` and `receiver_id`: the ring is replaced by "Missed
// call" with a "Call back" action, which opens the app on `/?call=<caller id>&type=<call
// type>&user=<user id>`, and the app places the call.

const DB = "ringline";
const SESSIONS = "sessions";

/// IndexedDB's one object store of sessions (`{user, token, me}`), shared with the page.
function openSessions() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(SESSIONS, { keyPath: "user" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function sessionOf(user) {
  const db = await openSessions();
  return new Promise((resolve) => {
    const request = db.transaction(SESSIONS).objectStore(SESSIONS).get(user);
    request.onsuccess = () => resolve(request.result || null);
    request.onerror = () => resolve(null);
  });
}

const nameOf = (user) => [user.first_name, user.last_name].filter(Boolean).join(" ") || user.username || user.id;
const tagOf = (callId) => `call-${callId}`;

/// Whether a tab of the app is on screen: it rings by itself then.
async function aTabIsVisible() {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  return windows.some((client) => client.visibilityState === "visible");
}

async function closeRing(callId) {
  const shown = await self.registration.getNotifications({ tag: tagOf(callId) });
  shown.forEach((notification) => notification.close());
}

async function ring(call, expiresAt) {
  if (await aTabIsVisible()) return;
  const kind = call.call_type === "voice" ? "voice" : "video";
  await self.registration.showNotification(`Incoming ${kind} call`, {
    body: `${nameOf(call.caller)} is calling you`,
    tag: tagOf(call.id),
    renotify: true,
    requireInteraction: true,
    data: { callId: String(call.id), user: String(call.receiver.id) },
    actions: [
      { action: "answer", title: "Answer" },
      { action: "decline", title: "Decline" },
    ],
  });
  // With several server instances the end of the ring may come from one that did not ring
  // this browser: the ring is taken down at the latest when it would have timed out.
  const deadline = Date.parse(expiresAt) || Date.now() + 45_000;
  const wait = Math.min(Math.max(deadline - Date.now(), 0), 60_000);
  await new Promise((resolve) => setTimeout(resolve, wait));
  await closeRing(call.id);
}

/// Replaces the ring of a call the user missed with a notification that stays, to call back.
async function showMissed(message) {
  await closeRing(message.call_id);
  if (await aTabIsVisible()) return; // the page says so itself, and its history has Call back
  const caller = message.caller || {};
  const kind = message.call_type === "video" ? "video" : "voice";
  await self.registration.showNotification(`Missed ${kind} call`, {
    body: `${nameOf(caller)} called you`,
    tag: `missed-${message.call_id}`,
    data: { callBack: String(caller.id), callType: kind, user: String(message.receiver_id) },
    actions: [{ action: "call-back", title: "Call back" }],
  });
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message;
  try {
    message = event.data?.json();
  } catch {
    return;
  }
  if (!message?.type) return;
  if (message.type === "call.ringing" && message.call) {
    event.waitUntil(ring(message.call, message.expires_at));
  } else if (message.missed && message.caller?.id && message.call_id) {
    event.waitUntil(showMissed(message));
  } else if (message.call_id) {
    event.waitUntil(closeRing(message.call_id));
  }
});

self.addEventListener("notificationclick", (event) => {
  const { callId, user, callBack, callType } = event.notification.data || {};
  event.notification.close();
  if (callBack) {
    // "Call back", or a click on the missed call itself: the app, calling them.
    const url = `/?call=${encodeURIComponent(callBack)}&type=${encodeURIComponent(callType)}&user=${encodeURIComponent(user)}`;
    event.waitUntil(self.clients.openWindow(url));
    return;
  }
  if (!callId) return;
  if (event.action === "decline") {
    event.waitUntil(
      sessionOf(user).then((session) =>
        session
          ? fetch(`/api/calls/${callId}/reject/`, {
              method: "POST",
              headers: { authorization: `Bearer ${session.token}`, "content-type": "application/json" },
              body: "{}",
            })
          : undefined,
      ),
    );
    return;
  }
  // Answer (or a click on the notification itself): the app, answering this call.
  const url = `/?answer=${encodeURIComponent(callId)}&user=${encodeURIComponent(user)}`;
  event.waitUntil(self.clients.openWindow(url));
});
