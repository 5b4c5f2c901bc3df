//! The original app's clients, as their code behaves, against the real server over real
//! WebSockets. Written from reading `frontend/contexts/CallContext.tsx`, `useWebRTC.ts`, the
//! chat page and socket hooks, and `mobile/contexts/CallContext.tsx` of the original app; no
//! code of theirs is here. What matters about them:
//!
//! - A web tab keeps a notification socket open on every page and, on a chat page, a chat
//!   socket too; it feeds call events from **both** into one handler, applies **every copy**
//!   and ignores `event_id`. It signals on the notification socket.
//! - Its peer (simple-peer) breaks on an SDP answer it gets a second time ("Called in wrong
//!   state: stable"), and on a second offer once it has answered.
//! - An incoming call stops ringing only on `call.end`; a `call.end` during a call hangs up
//!   (the mobile client too, without looking at who sent it).
//! - `call.rejected` shows "Call Declined" for two seconds; a `call.end` wipes that screen.
//! - Its chat socket reconnects on any close code but 1000.

use std::fmt::Write as _;

use ringline_domain::UserId;
use ringline_tests::{DatabaseBackend, TestApp, WsClient};
use serde_json::{Value, json};

/// How long a tab waits for more events before it counts as settled.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);
const CONVERSATION: i64 = 7;

/// The peer connection's signaling state, as far as the original's use of it can break.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    None,
    /// The caller sent its (non-trickled) offer and waits for the answer.
    HaveLocalOffer,
    /// The callee answered the offer, or the caller applied the answer.
    Stable,
    /// simple-peer destroyed the connection after a signal in the wrong state.
    Broken(String),
}

/// Which of its sockets a tab sends a frame on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Notifications,
    Chat,
}

/// One browser tab or phone running the original client, reduced to its call state.
#[derive(Debug)]
struct OldClient {
    name: &'static str,
    token: String,
    notifications: WsClient,
    chat: Option<WsClient>,
    ringing: Option<String>,
    outgoing: Option<String>,
    in_call: Option<String>,
    /// The offer waiting for the user to press Accept (the original dedupes identical ones).
    pending_offer: Option<Value>,
    peer: Peer,
    declined_screen: bool,
    /// A `call.end` arrived while this client was in a call: it hung up.
    hung_up: bool,
    log: String,
}

impl OldClient {
    /// A web tab: notification socket, plus the chat socket when the conversation is on screen.
    async fn web_tab(app: &TestApp, name: &'static str, on_chat_page: bool) -> Self {
        let token = app.token(name);
        let notifications = app.notifications_socket(&token).await;
        let chat = if on_chat_page { Some(app.chat_socket(&token, CONVERSATION).await) } else { None };
        let mut tab = Self::new(name, token, notifications, chat);
        // A page handles what arrives as it loads (a `call.end` for a call that finished while
        // it was closed) long before anyone can click Call.
        tab.settle().await;
        tab
    }

    /// The mobile client: one notification socket.
    async fn phone(app: &TestApp, name: &'static str) -> Self {
        let token = app.token(name);
        let notifications = app.notifications_socket(&token).await;
        let mut phone = Self::new(name, token, notifications, None);
        phone.settle().await;
        phone
    }

    fn new(name: &'static str, token: String, notifications: WsClient, chat: Option<WsClient>) -> Self {
        Self {
            name,
            token,
            notifications,
            chat,
            ringing: None,
            outgoing: None,
            in_call: None,
            pending_offer: None,
            peer: Peer::None,
            declined_screen: false,
            hung_up: false,
            log: String::new(),
        }
    }

    /// Reads every event both sockets have, into the one handler, until both are quiet.
    async fn settle(&mut self) {
        loop {
            let mut any = false;
            while let Some(event) = self.notifications.next_event_within(QUIET).await {
                self.apply(&event, "notifications");
                any = true;
            }
            if let Some(chat) = self.chat.as_mut() {
                let mut from_chat = Vec::new();
                while let Some(event) = chat.next_event_within(QUIET).await {
                    from_chat.push(event);
                }
                any |= !from_chat.is_empty();
                for event in from_chat {
                    self.apply(&event, "chat");
                }
            }
            if !any {
                return;
            }
        }
    }

    /// What the original's handler does with one event (`event_id` ignored, as it does).
    fn apply(&mut self, event: &Value, socket: &str) {
        let kind = event["type"].as_str().unwrap_or_default();
        let call = event["call_id"].as_str().map(str::to_owned);
        let _ = writeln!(self.log, "{socket}: {kind} {}", event["end_reason"]);
        let me = Some(self.name);
        match kind {
            "call.incoming" if event["caller_id"].as_str() != me => self.ringing = call,
            "call.offer" if event["caller_id"].as_str() != me => {
                self.ringing = call;
                let offer = &event["offer"];
                if offer.is_null() {
                    return;
                }
                if self.peer == Peer::Stable {
                    self.break_peer("a second offer after answering");
                } else if self.pending_offer.as_ref().is_none_or(|pending| pending == offer) {
                    self.pending_offer = Some(offer.clone());
                } else {
                    self.break_peer("a different offer while one is pending");
                }
            }
            "call.answer" => {
                if self.outgoing.is_some() && self.outgoing == call {
                    self.in_call = self.outgoing.take();
                }
                if !event["answer"].is_null() && event["receiver_id"].as_str() != me {
                    match self.peer {
                        Peer::HaveLocalOffer => self.peer = Peer::Stable,
                        Peer::Stable => self.break_peer("Called in wrong state: stable"),
                        _ => {}
                    }
                }
            }
            "call.accepted" if self.outgoing.is_some() && self.outgoing == call => {
                self.in_call = self.outgoing.take();
            }
            "call.rejected" if self.outgoing.is_some() && self.outgoing == call => self.declined_screen = true,
            "call.end" => {
                self.ringing = None;
                self.outgoing = None;
                self.declined_screen = false;
                if self.in_call.take().is_some() {
                    self.hung_up = true;
                    self.peer = Peer::None;
                }
            }
            _ => {}
        }
    }

    fn break_peer(&mut self, why: &str) {
        self.peer = Peer::Broken(why.to_owned());
    }

    fn socket(&mut self, via: Via) -> &mut WsClient {
        match via {
            Via::Notifications => &mut self.notifications,
            Via::Chat => self.chat.as_mut().expect("a chat socket"),
        }
    }

    /// The chat page's call button: `initiate/`, then the full offer.
    async fn place_call(&mut self, app: &TestApp, receiver: &str, call_type: &str, offer_via: Via) -> String {
        let body = json!({"receiver_id": receiver, "call_type": call_type, "conversation_id": CONVERSATION});
        let call = app.post("/api/calls/initiate/", &self.token, body).await.expect(201);
        let id = call["id"].as_i64().expect("id").to_string();
        self.outgoing = Some(id.clone());
        self.peer = Peer::HaveLocalOffer;
        let offer = json!({"type": "call.offer", "call_id": id, "call_type": call_type, "offer": sdp("offer"), "conversation_id": CONVERSATION.to_string()});
        self.socket(offer_via).send_json(offer).await;
        id
    }

    /// The web client's Accept: answers the pending offer over its notification socket.
    async fn answer_on_socket(&mut self) {
        let id = self.ringing.take().expect("a ringing call to answer");
        self.send_answer(id).await;
    }

    /// The mobile client's Accept: `accept/` over REST, then its answer on the socket.
    async fn accept_over_rest_then_answer(&mut self, app: &TestApp) {
        let id = self.ringing.take().expect("a ringing call to accept");
        app.post(&format!("/api/calls/{id}/accept/"), &self.token, json!({})).await.expect(200);
        self.settle().await;
        self.send_answer(id).await;
    }

    async fn send_answer(&mut self, id: String) {
        assert!(self.pending_offer.take().is_some(), "{}: answering needs the offer", self.name);
        self.peer = Peer::Stable;
        self.in_call = Some(id.clone());
        self.notifications.send_json(json!({"type": "call.answer", "call_id": id, "answer": sdp("answer")})).await;
    }

    /// The web client's Decline: `reject/` only.
    async fn decline(&mut self, app: &TestApp) {
        let id = self.ringing.take().expect("a ringing call to decline");
        app.post(&format!("/api/calls/{id}/reject/"), &self.token, json!({})).await.expect(200);
    }

    /// The web client's hang-up: a socket `call.end`, then `end/`.
    async fn hang_up(&mut self, app: &TestApp) {
        let id = self.in_call.take().expect("a call to hang up");
        self.peer = Peer::None;
        self.notifications.send_json(json!({"type": "call.end", "call_id": id})).await;
        app.post(&format!("/api/calls/{id}/end/"), &self.token, json!({"duration_seconds": 1})).await.expect(200);
    }

    #[track_caller]
    fn assert_healthy(&self) {
        assert!(!matches!(self.peer, Peer::Broken(_)), "{}'s peer broke: {:?}\n{}", self.name, self.peer, self.log);
    }
}

fn sdp(kind: &str) -> Value {
    json!({"type": kind, "sdp": format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na={kind}\r\n")})
}

async fn settle_all(clients: &mut [&mut OldClient]) {
    for client in clients.iter_mut() {
        client.settle().await;
    }
}

async fn app_with_people(backend: DatabaseBackend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.user("alice").await;
    app.user("bob").await;
    app.conversation(CONVERSATION, &["alice", "bob"]).await;
    app
}

/// Both parties on the chat page (both sockets open), the call placed there, for voice and
/// video, with the offer sent on either socket: each peer gets one offer and one answer, the
/// call connects, and the caller's hang-up ends it on both sides.
async fn both_sockets_call(backend: DatabaseBackend) {
    let app = app_with_people(backend).await;
    for call_type in ["voice", "video"] {
        for offer_via in [Via::Notifications, Via::Chat] {
            let mut alice = OldClient::web_tab(&app, "alice", true).await;
            let mut bob = OldClient::web_tab(&app, "bob", true).await;
            let id = alice.place_call(&app, "bob", call_type, offer_via).await;
            settle_all(&mut [&mut alice, &mut bob]).await;
            assert_eq!(bob.ringing.as_deref(), Some(id.as_str()), "bob rings\n{}", bob.log);

            bob.answer_on_socket().await;
            settle_all(&mut [&mut alice, &mut bob]).await;
            alice.assert_healthy();
            bob.assert_healthy();
            assert_eq!(alice.peer, Peer::Stable, "alice applied the answer once\n{}", alice.log);
            assert_eq!(alice.in_call.as_deref(), Some(id.as_str()));
            assert_eq!(bob.in_call.as_deref(), Some(id.as_str()), "bob's own tab keeps the call\n{}", bob.log);
            let call = app.get(&format!("/api/calls/{id}/"), &alice.token).await.expect(200);
            assert_eq!(call["status"], "active");

            alice.hang_up(&app).await;
            settle_all(&mut [&mut alice, &mut bob]).await;
            assert!(bob.hung_up && bob.in_call.is_none(), "bob's side ended\n{}", bob.log);
            assert!(!alice.hung_up, "alice hung up herself");
            let call = app.get(&format!("/api/calls/{id}/"), &bob.token).await.expect(200);
            assert_eq!(call["status"], "ended");
            assert!(call["answered_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{call}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_web_clients_with_both_sockets_open_connect_once_and_hang_up_cleanly_on_sqlite() {
    both_sockets_call(DatabaseBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_web_clients_with_both_sockets_open_connect_once_and_hang_up_cleanly_on_postgres() {
    both_sockets_call(DatabaseBackend::Postgres).await;
}

/// A callee signed in on two web tabs (both on the chat page) and a phone. Whichever device
/// answers, by the web client's socket answer or the mobile client's REST accept, the others
/// stop ringing, and the one that answered keeps its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callees_other_devices_stop_ringing_and_the_answering_one_keeps_the_call() {
    let app = app_with_people(DatabaseBackend::Sqlite).await;
    let mut alice = OldClient::web_tab(&app, "alice", true).await;
    let mut tab_a = OldClient::web_tab(&app, "bob", true).await;
    let mut tab_b = OldClient::web_tab(&app, "bob", true).await;
    let mut phone = OldClient::phone(&app, "bob").await;

    // Answered in tab A over its socket.
    let id = alice.place_call(&app, "bob", "video", Via::Notifications).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b, &mut phone]).await;
    for device in [&tab_a, &tab_b, &phone] {
        assert_eq!(device.ringing.as_deref(), Some(id.as_str()), "every device rings\n{}", device.log);
    }
    tab_a.answer_on_socket().await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b, &mut phone]).await;
    assert_eq!(tab_b.ringing, None, "tab B stopped ringing\n{}", tab_b.log);
    assert_eq!(phone.ringing, None, "the phone stopped ringing\n{}", phone.log);
    assert!(tab_a.in_call.is_some() && !tab_a.hung_up, "tab A keeps its call\n{}", tab_a.log);
    assert_eq!(alice.peer, Peer::Stable);
    alice.assert_healthy();
    alice.hang_up(&app).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b, &mut phone]).await;
    assert!(tab_a.hung_up);

    // Accepted on the phone over REST, then its answer on the socket.
    let id = alice.place_call(&app, "bob", "voice", Via::Notifications).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b, &mut phone]).await;
    phone.accept_over_rest_then_answer(&app).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b, &mut phone]).await;
    assert_eq!(tab_a.ringing, None, "tab A stopped ringing\n{}", tab_a.log);
    assert_eq!(tab_b.ringing, None, "tab B stopped ringing\n{}", tab_b.log);
    assert_eq!(phone.in_call.as_deref(), Some(id.as_str()), "the phone keeps its call\n{}", phone.log);
    assert!(!phone.hung_up, "the phone was not hung up\n{}", phone.log);
    assert_eq!(alice.peer, Peer::Stable, "alice got the phone's answer once\n{}", alice.log);
    alice.assert_healthy();
    let call = app.get(&format!("/api/calls/{id}/"), &alice.token).await.expect(200);
    assert_eq!(call["status"], "active");
    app.stop().await;
}

/// The web client's decline: the caller's "Call Declined" screen is not wiped by a `call.end`,
/// and the callee's other tab stops ringing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_keeps_the_callers_declined_screen_and_stops_the_other_tabs() {
    let app = app_with_people(DatabaseBackend::Sqlite).await;
    let mut alice = OldClient::web_tab(&app, "alice", true).await;
    let mut tab_a = OldClient::web_tab(&app, "bob", true).await;
    let mut tab_b = OldClient::web_tab(&app, "bob", false).await;
    alice.place_call(&app, "bob", "voice", Via::Notifications).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b]).await;
    tab_a.decline(&app).await;
    settle_all(&mut [&mut alice, &mut tab_a, &mut tab_b]).await;
    assert!(alice.declined_screen, "alice sees Call Declined\n{}", alice.log);
    assert_eq!(tab_b.ringing, None, "tab B stopped ringing\n{}", tab_b.log);
    app.stop().await;
}

/// The original chat-socket hook: reconnects a second later on any close code but 1000.
#[derive(Debug)]
struct ReconnectingChatSocket {
    socket: Option<WsClient>,
    reconnects: u32,
}

impl ReconnectingChatSocket {
    async fn open(app: &TestApp, token: &str) -> Self {
        Self { socket: Some(app.chat_socket(token, CONVERSATION).await), reconnects: 0 }
    }

    /// The page unmounts and closes its socket with 1000; the hook reconnects unless the close
    /// it observed said 1000.
    async fn leave_page(&mut self, app: &TestApp, token: &str) -> Option<u16> {
        let mut socket = self.socket.take().expect("open");
        let observed = socket.close_and_read_reply(1000).await;
        if observed != Some(1000) {
            self.reconnects += 1;
            self.socket = Some(app.chat_socket(token, CONVERSATION).await);
        }
        observed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_with_its_code_so_old_clients_stay_closed() {
    let app = app_with_people(DatabaseBackend::Sqlite).await;
    let token = app.token("alice");
    let alice = UserId::parse("alice").expect("id");

    let mut hook = ReconnectingChatSocket::open(&app, &token).await;
    assert_eq!(app.signaling().sessions().sessions_of(&alice), 1);
    assert_eq!(hook.leave_page(&app, &token).await, Some(1000), "the server answers with the client's code");
    assert_eq!(hook.reconnects, 0, "so the hook does not bring the socket back");
    wait_until(|| app.signaling().sessions().sessions_of(&alice) == 0).await;

    // Any code is echoed: a client's own application code too.
    let mut socket = app.notifications_socket(&token).await;
    assert_eq!(socket.close_and_read_reply(4321).await, Some(4321));
    app.stop().await;
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + ringline_tests::EVENT_WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
