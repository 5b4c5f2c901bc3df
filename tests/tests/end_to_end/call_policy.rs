//! Who may ring whom: blocks in both directions, call privacy, do-not-disturb, the rate caps
//! at their exact edges, the admin's replacement of a block list, the host application's
//! policy hook (allowing, refusing, timing out and failing, open and closed), and two
//! instances obeying one block at once. Every refusal leaves nothing behind: no call, no
//! notification, no event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use poem::Request;
use poem::http::StatusCode;
use reqwest::Method;
use ringline_tests::{DatabaseBackend, ManualClock, TestApp, on_both_databases, spawn_http};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "policy-hook-test-secret";

async fn patch(app: &TestApp, token: &str, body: Value) -> ringline_tests::Reply {
    app.send(Method::PATCH, "/api/call-settings/", Some(token), Some(body)).await
}

async fn initiate(app: &TestApp, token: &str, receiver: &str) -> ringline_tests::Reply {
    app.post("/api/calls/initiate/", token, json!({"receiver_id": receiver, "call_type": "voice"})).await
}

/// What a refused caller sees: 403 `call_not_allowed`, the same words whatever the reason.
async fn refused(app: &TestApp, token: &str, receiver: &str) -> Value {
    initiate(app, token, receiver).await.expect_error(403, "call_not_allowed")
}

/// A `429 rate_limited` refusal: its `Retry-After` and its body.
async fn refused_for_rate(app: &TestApp, token: &str, receiver: &str) -> (String, Value) {
    let request = app.http.post(format!("{}/api/calls/initiate/", app.base)).bearer_auth(token);
    let reply = request.json(&json!({"receiver_id": receiver})).send().await.expect("an answer");
    assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = reply.headers()["retry-after"].to_str().expect("ASCII").to_owned();
    let body: Value = reply.json().await.expect("JSON");
    assert_eq!(body["code"], "rate_limited", "{body}");
    (retry_after, body)
}

/// Nothing was stored for anyone: no call in either party's history, no notification.
async fn nothing_stored(app: &TestApp, tokens: &[&str]) {
    for token in tokens {
        assert_eq!(app.get("/api/calls/", token).await.expect(200)["count"], 0);
        assert_eq!(app.get("/api/notifications/", token).await.expect(200)["count"], 0);
    }
}

async fn blocks_refuse_calls_both_ways_and_look_like_privacy(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let mut alice_socket = app.notifications_socket(&alice).await;
    let mut bob_socket = app.notifications_socket(&bob).await;

    let blocked = app.post("/api/call-blocks/", &alice, json!({"user_id": "bob"})).await.expect(201);
    assert_eq!(blocked["user"]["id"], "bob");
    // Blocking twice is no error, and keeps the first moment.
    let again = app.post("/api/call-blocks/", &alice, json!({"user_id": "bob"})).await.expect(201);
    assert_eq!(again["blocked_at"], blocked["blocked_at"]);
    let by_block = refused(&app, &bob, "alice").await;
    refused(&app, &alice, "bob").await;
    alice_socket.expect_silence().await;
    bob_socket.expect_silence().await;
    nothing_stored(&app, &[&alice, &bob]).await;

    // Carol admits nobody: her refusal reads exactly like alice's block.
    patch(&app, &carol, json!({"who_can_call": "nobody"})).await.expect(200);
    assert_eq!(refused(&app, &bob, "carol").await, by_block);

    // The list, and unblocking.
    let page = app.get("/api/call-blocks/", &alice).await.expect(200);
    assert_eq!((page["count"].as_u64(), page["results"][0]["user"]["username"].as_str()), (Some(1), Some("bob")));
    assert_eq!(app.get("/api/call-blocks/", &bob).await.expect(200)["count"], 0, "a block is the blocker's");
    let deleted = app.send(Method::DELETE, "/api/call-blocks/bob/", Some(&alice), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = app.send(Method::DELETE, "/api/call-blocks/bob/", Some(&alice), None).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "unblocking is idempotent too");
    app.ring(&bob, "alice").await;
    alice_socket.expect("call.incoming").await;
    app.stop().await;
}

async fn block_requests_are_checked(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    app.post("/api/call-blocks/", &alice, json!({"user_id": "alice"})).await.expect_error(400, "cannot_block_self");
    app.post("/api/call-blocks/", &alice, json!({"user_id": "nobody-here"})).await.expect_error(404, "user_not_found");
    app.post("/api/call-blocks/", &alice, json!({"user_id": "has space"})).await.expect_error(400, "invalid_user_id");
    app.post("/api/call-blocks/", &alice, json!({})).await.expect_error(400, "parse_error");
    app.send(Method::GET, "/api/call-blocks/", None, None).await.expect_error(401, "not_authenticated");
    app.get("/api/call-blocks/?page=2", &alice).await.expect_error(404, "invalid_page");
    app.stop().await;
}

async fn settings_take_each_value_and_refuse_bad_ones(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let defaults = app.get("/api/call-settings/", &alice).await.expect(200);
    assert_eq!(
        defaults,
        json!({"who_can_call": "everyone", "do_not_disturb": false, "do_not_disturb_until": null, "relay_only": false, "call_waiting": false})
    );
    for who in ["conversations", "nobody", "everyone"] {
        let settings = patch(&app, &alice, json!({"who_can_call": who})).await.expect(200);
        assert_eq!(settings["who_can_call"], who);
    }
    let settings = patch(&app, &alice, json!({"do_not_disturb_until": "2031-01-02T03:04:05+01:00"})).await.expect(200);
    assert_eq!(settings["do_not_disturb_until"], "2031-01-02T02:04:05.000000Z");
    // A change keeps what it does not name.
    let settings = patch(&app, &alice, json!({"do_not_disturb": true})).await.expect(200);
    assert_eq!(settings["do_not_disturb_until"], "2031-01-02T02:04:05.000000Z");
    let settings = patch(&app, &alice, json!({"do_not_disturb_until": null})).await.expect(200);
    assert_eq!(
        settings,
        json!({"who_can_call": "everyone", "do_not_disturb": true, "do_not_disturb_until": null, "relay_only": false, "call_waiting": false})
    );
    assert_eq!(app.get("/api/call-settings/", &alice).await.expect(200), settings);

    for bad in [
        json!({"who_can_call": "friends"}),
        json!({"who_can_call": ""}),
        json!({"do_not_disturb_until": "tomorrow"}),
        json!({"who_can_call": null}),
        json!({"do_not_disturb": null}),
        json!({"relay_only": null}),
        json!({"call_waiting": null}),
    ] {
        patch(&app, &alice, bad).await.expect_error(400, "invalid_call_settings");
    }
    patch(&app, &alice, json!({"do_not_disturb": "yes"})).await.expect_error(400, "parse_error");
    // An empty change changes nothing.
    assert_eq!(patch(&app, &alice, json!({})).await.expect(200), settings);
    app.stop().await;
}

async fn conversations_admits_only_people_who_share_one(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    app.conversation(7, &["bob", "carol"]).await;
    patch(&app, &carol, json!({"who_can_call": "conversations"})).await.expect(200);
    refused(&app, &alice, "carol").await;
    nothing_stored(&app, &[&alice]).await;
    let id = app.ring(&bob, "carol").await;
    app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);
    app.stop().await;
}

/// Do-not-disturb: the call exists and rings for the caller, none of the callee's devices
/// hears of it (not the sockets open then, not one that connects while it rings), and at
/// the ring timeout it is missed, with the missed-call notification.
async fn do_not_disturb_rings_nobody_and_ends_missed(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |_| {}).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    patch(&app, &bob, json!({"do_not_disturb": true})).await.expect(200);
    let mut alice_socket = app.notifications_socket(&alice).await;
    let mut bob_socket = app.notifications_socket(&bob).await;

    let call = initiate(&app, &alice, "bob").await.expect(201);
    assert_eq!(call["status"], "ringing", "to the caller it rings as any call");
    let id = call["id"].as_i64().expect("an id");
    bob_socket.expect_silence().await;
    let (_late, ack) = app.notifications_socket_resuming(&bob, None).await;
    assert_eq!(ack["open_calls"], json!([]), "a device that connects now is not rung either: {ack}");

    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));
    app.signaling().expire_due(100).await.expect("sweep");
    assert_eq!(alice_socket.expect("call.missed").await["call_id"], id.to_string());
    alice_socket.expect("call.end").await;
    // The callee learns of it now, as of any missed call (the end tells old clients nothing
    // rings: nothing did).
    bob_socket.expect("call.missed").await;
    bob_socket.expect("call.end").await;
    let notification = bob_socket.expect("notification.created").await;
    assert_eq!(notification["payload"]["verb"], "missed_voice_call");
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200)["status"], "missed");

    // A time that has passed turns it off: the next call rings.
    patch(&app, &bob, json!({"do_not_disturb": false, "do_not_disturb_until": ringline_domain::Clock::now(clock.as_ref()).to_string()})).await.expect(200);
    clock.advance(Duration::from_secs(1));
    app.ring(&alice, "bob").await;
    bob_socket.expect("call.incoming").await;
    app.stop().await;
}

/// The caps refuse the call one over, with `Retry-After` saying when the oldest counted call
/// leaves its window, and allow it from that second on.
async fn rate_caps_refuse_at_their_exact_edges(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |settings| {
        settings.call_policy.calls_per_minute = 3;
        settings.call_policy.unanswered_calls_per_callee = 0;
    })
    .await;
    let alice = app.user("alice").await;
    for callee in ["b1", "b2", "b3", "b4"] {
        app.user(callee).await;
    }
    // Three calls, cancelled at once, ten seconds apart.
    for callee in ["b1", "b2", "b3"] {
        let id = app.ring(&alice, callee).await;
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        clock.advance(Duration::from_secs(10));
    }
    // 30 s after the first: it leaves the minute in 30 s.
    assert_eq!(refused_for_rate(&app, &alice, "b4").await.0, "30");
    assert_eq!(app.get("/api/calls/", &alice).await.expect(200)["count"], 3, "nothing was created");
    clock.advance(Duration::from_secs(29));
    assert_eq!(refused_for_rate(&app, &alice, "b4").await.0, "1");
    clock.advance(Duration::from_secs(1));
    app.ring(&alice, "b4").await;
    app.stop().await;
}

async fn unanswered_calls_cap_one_caller_towards_one_callee(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |settings| {
        settings.call_policy.calls_per_minute = 0;
        settings.call_policy.unanswered_calls_per_callee = 3;
    })
    .await;
    let (alice, bob, _carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    // Missed, declined, cancelled: three unanswered calls to bob.
    let missed = app.ring(&alice, "bob").await;
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT + Duration::from_secs(1));
    app.signaling().expire_due(100).await.expect("sweep");
    assert_eq!(app.get(&format!("/api/calls/{missed}/"), &bob).await.expect(200)["status"], "missed");
    let declined = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{declined}/reject/"), &bob, json!({})).await.expect(200);
    let cancelled = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{cancelled}/end/"), &alice, json!({})).await.expect(200);

    // 29 s after the first call started: it leaves the ten minutes in 571 s.
    let (retry_after, body) = refused_for_rate(&app, &alice, "bob").await;
    assert_eq!(retry_after, "571");
    assert!(body["detail"].as_str().is_some_and(|detail| detail.contains("not answered")), "{body}");
    // Others are still reachable, and bob may still call alice.
    let to_carol = app.ring(&alice, "carol").await;
    app.post(&format!("/api/calls/{to_carol}/end/"), &alice, json!({})).await.expect(200);
    let back = app.ring(&bob, "alice").await;
    app.post(&format!("/api/calls/{back}/end/"), &bob, json!({})).await.expect(200);
    // Ten minutes after the first (missed) call started, one place frees up; not a second before.
    clock.advance(Duration::from_secs(10 * 60 - 29 - 1));
    assert_eq!(refused_for_rate(&app, &alice, "bob").await.0, "1");
    clock.advance(Duration::from_secs(1));
    app.ring(&alice, "bob").await;
    app.stop().await;
}

async fn blocking_a_ringing_caller_declines_the_call(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut alice_socket = app.notifications_socket(&alice).await;
    let id = app.ring(&alice, "bob").await;
    app.post("/api/call-blocks/", &bob, json!({"user_id": "alice"})).await.expect(201);
    assert_eq!(alice_socket.expect("call.rejected").await["call_id"], id.to_string());
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200)["status"], "rejected");
    app.stop().await;
}

async fn the_admin_replaces_a_block_list(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.auth.admin_token = Some("admin-token-for-tests".to_owned().into());
    })
    .await;
    let (alice, bob, _carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let put = |body: Value, user: &'static str| {
        let request = app.http.put(format!("{}/api/admin/users/{user}/call-blocks/", app.base));
        request.bearer_auth("admin-token-for-tests").json(&body).send()
    };
    let reply = put(json!({"user_ids": ["carol", "bob", "bob"]}), "alice").await.expect("answer");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.json::<Value>().await.expect("json"), json!({"user_id": "alice", "user_ids": ["bob", "carol"]}));
    assert_eq!(app.get("/api/call-blocks/", &alice).await.expect(200)["count"], 2);
    refused(&app, &bob, "alice").await;

    let reply = put(json!({"user_ids": []}), "alice").await.expect("answer");
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(app.get("/api/call-blocks/", &alice).await.expect(200)["count"], 0);
    let id = app.ring(&bob, "alice").await;
    app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);

    assert_eq!(put(json!({"user_ids": ["ghost"]}), "alice").await.expect("answer").status(), StatusCode::CONFLICT);
    assert_eq!(put(json!({"user_ids": []}), "nobody").await.expect("answer").status(), StatusCode::NOT_FOUND);
    assert_eq!(put(json!({"user_ids": ["alice"]}), "alice").await.expect("answer").status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/api/call-blocks/", &alice).await.expect(200)["count"], 0, "a refused replace changes nothing");
    app.stop().await;
}

/// What the stand-in hook answers.
#[derive(Debug, Clone, Copy)]
enum HookAnswer {
    Allow(bool),
    Slow,
    Fail,
}

/// A policy hook on a local port, checking each request's signature as `docs/api.md` tells a
/// host application to.
struct Hook {
    url: String,
    answer: Arc<Mutex<HookAnswer>>,
    asked: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Self {
        let answer = Arc::new(Mutex::new(HookAnswer::Allow(true)));
        let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (decide, log) = (answer.clone(), asked.clone());
        let endpoint = poem::endpoint::make(move |mut request: Request| {
            let (decide, log) = (decide.clone(), log.clone());
            async move {
                let signature = request.headers().get("ringline-signature").and_then(|v| v.to_str().ok());
                let signature = signature.expect("signed").to_owned();
                let raw = request.take_body().into_bytes().await.expect("a body");
                let (t, v1) = signature
                    .split_once(',')
                    .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
                    .expect("t=…,v1=…");
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
                mac.update(format!("{t}.").as_bytes());
                mac.update(&raw);
                let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(v1, expected, "the signature verifies");
                log.lock().expect("lock").push(serde_json::from_slice(&raw).expect("JSON"));
                let answer = *decide.lock().expect("lock");
                match answer {
                    HookAnswer::Allow(allow) => poem::Response::builder()
                        .content_type("application/json")
                        .body(json!({"allow": allow}).to_string()),
                    HookAnswer::Slow => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        poem::Response::builder().body(json!({"allow": true}).to_string())
                    }
                    HookAnswer::Fail => poem::Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).finish(),
                }
            }
        });
        let base = spawn_http(poem::Route::new().at("/policy", endpoint)).await;
        Self { url: format!("{base}/policy"), answer, asked }
    }

    fn answer(&self, answer: HookAnswer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn asked(&self) -> Vec<Value> {
        self.asked.lock().expect("lock").clone()
    }
}

async fn the_hook_decides_and_its_silence_follows_fail_open(backend: DatabaseBackend) {
    let hook = Hook::start().await;
    for fail_open in [true, false] {
        let app = TestApp::spawn_with(backend, |settings| {
            settings.call_policy.call_policy_url = Some(hook.url.clone());
            settings.call_policy.call_policy_timeout_ms = 300;
            settings.call_policy.call_policy_fail_open = fail_open;
            settings.webhook.webhook_secret = Some(SECRET.to_owned().into());
        })
        .await;
        let (alice, bob) = (app.user("alice").await, app.user("bob").await);
        app.conversation(3, &["alice", "bob"]).await;
        let mut bob_socket = app.notifications_socket(&bob).await;
        let before = hook.asked().len();

        hook.answer(HookAnswer::Allow(true));
        let body = json!({"receiver_id": "bob", "call_type": "video", "conversation_id": 3});
        let call = app.post("/api/calls/initiate/", &alice, body).await.expect(201);
        assert_eq!(
            hook.asked()[before],
            json!({"caller": "alice", "callee": "bob", "call_type": "video", "conversation_id": 3})
        );
        app.post(&format!("/api/calls/{}/end/", call["id"]), &alice, json!({})).await.expect(200);
        bob_socket.expect("call.incoming").await;

        hook.answer(HookAnswer::Allow(false));
        refused(&app, &alice, "bob").await;
        for silent in [HookAnswer::Slow, HookAnswer::Fail] {
            hook.answer(silent);
            let started = std::time::Instant::now();
            let reply = initiate(&app, &alice, "bob").await;
            assert!(started.elapsed() < Duration::from_millis(1500), "the deadline holds: {:?}", started.elapsed());
            if fail_open {
                let id = reply.expect(201)["id"].clone();
                app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
            } else {
                reply.expect_error(403, "call_not_allowed");
            }
        }
        // A call the store already refuses never reaches the hook.
        app.post("/api/call-blocks/", &bob, json!({"user_id": "alice"})).await.expect(201);
        let asked = hook.asked().len();
        refused(&app, &alice, "bob").await;
        assert_eq!(hook.asked().len(), asked);
        let calls = app.get("/api/calls/", &alice).await.expect(200)["count"].as_u64();
        assert_eq!(calls, Some(if fail_open { 3 } else { 1 }), "no refusal created a call");
        app.stop().await;
    }
}

/// Two instances decide from the same store: a block made through one holds on the other at
/// once.
async fn a_block_through_one_instance_holds_on_the_other(backend: DatabaseBackend) {
    let instances = TestApp::spawn_joined(backend, 2, |_| {}).await;
    let (a, b) = (&instances[0], &instances[1]);
    let (alice, bob) = (a.user("alice").await, a.user("bob").await);
    a.post("/api/call-blocks/", &alice, json!({"user_id": "bob"})).await.expect(201);
    refused(b, &bob, "alice").await;
    b.send(Method::DELETE, "/api/call-blocks/bob/", Some(&alice), None).await.expect(204);
    a.ring(&bob, "alice").await;
    for instance in instances {
        instance.stop().await;
    }
}

/// Refusals are counted by reason, and silenced calls counted too.
async fn refusals_are_counted_by_reason(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    app.post("/api/call-blocks/", &bob, json!({"user_id": "alice"})).await.expect(201);
    refused(&app, &alice, "bob").await;
    patch(&app, &carol, json!({"do_not_disturb": true})).await.expect(200);
    app.ring(&alice, "carol").await;
    let scraped = app.scrape().await;
    assert_eq!(scraped.value("ringline_call_policy_refusals_total", &[("reason", "blocked")]), 1.0);
    assert_eq!(scraped.value("ringline_calls_silenced_total", &[]), 1.0);
    assert_eq!(scraped.value("ringline_call_refusals_total", &[("code", "call_not_allowed")]), 1.0);
    app.stop().await;
}

on_both_databases!(
    blocks_refuse_calls_both_ways_and_look_like_privacy,
    block_requests_are_checked,
    settings_take_each_value_and_refuse_bad_ones,
    conversations_admits_only_people_who_share_one,
    do_not_disturb_rings_nobody_and_ends_missed,
    rate_caps_refuse_at_their_exact_edges,
    unanswered_calls_cap_one_caller_towards_one_callee,
    blocking_a_ringing_caller_declines_the_call,
    the_admin_replaces_a_block_list,
    the_hook_decides_and_its_silence_follows_fail_open,
    a_block_through_one_instance_holds_on_the_other,
    refusals_are_counted_by_reason,
);
