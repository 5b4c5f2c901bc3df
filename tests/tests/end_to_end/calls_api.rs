//! The call REST API, black-box, on SQLite and PostgreSQL: every endpoint's success and error
//! paths as the wire contract gives them.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use ringline_tests::{DatabaseBackend, ManualClock, TestApp, on_both_databases};
use serde_json::{Value, json};

on_both_databases!(
    a_call_runs_its_whole_lifecycle,
    call_json_has_the_contract_fields_and_no_private_ones,
    the_authorization_matrix_holds_on_every_call_endpoint,
    listing_is_paginated_like_django_rest_framework,
    a_busy_receiver_gets_user_busy_and_a_busy_caller_caller_busy,
    glare_answers_the_crossing_call,
    bad_initiate_requests_get_the_contracts_errors,
    conversations_are_checked,
    ending_and_rejecting_twice_succeed_and_change_nothing,
    the_duration_is_measured_by_the_server,
    the_caller_ending_a_ringing_call_cancels_it,
    the_ring_timeout_turns_an_unanswered_call_to_missed,
    two_devices_accepting_at_once_have_one_winner,
    accept_racing_hang_up_leaves_a_consistent_call,
    contacts_are_the_people_one_shares_a_conversation_with,
);

async fn a_call_runs_its_whole_lifecycle(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let id = app.ring(&alice, "bob").await;
    let seen_by_bob = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(seen_by_bob["status"], "ringing");

    let accepted = app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    assert_eq!(accepted["status"], "active");
    assert!(accepted["answered_at"].is_string());

    let ended = app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["end_reason"], "user_hangup");
    assert!(ended["duration_seconds"].is_u64());
    assert!(ended["ended_at"].is_string());

    let history = app.get("/api/calls/", &bob).await.expect(200);
    assert_eq!(history["count"], 1);
    assert_eq!(history["results"][0]["id"], id);
    app.stop().await;
}

async fn call_json_has_the_contract_fields_and_no_private_ones(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let call =
        app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "bob", "call_type": "voice"})).await.expect(201);
    let mut keys: Vec<&str> = call.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "answered_at",
            "call_type",
            "caller",
            "conversation",
            "created_at",
            "duration_seconds",
            "end_reason",
            "ended_at",
            "id",
            "quality",
            "rang_at",
            "receiver",
            "started_at",
            "status",
            "updated_at",
            "video_at",
            "waiting"
        ]
    );
    // Issue 32's additions, which the original clients ignore (they read the fields they know).
    assert_eq!(
        (call["rang_at"].clone(), call["video_at"].clone(), call["waiting"].clone()),
        (Value::Null, Value::Null, json!(false))
    );
    assert_eq!(call["call_type"], "voice");
    assert_eq!(call["quality"], Value::Null, "null until a party reports (issue 26's addition)");
    assert_eq!(call["conversation"], Value::Null);
    for party in ["caller", "receiver"] {
        let mut keys: Vec<&str> = call[party].as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["first_name", "id", "last_name", "profile_image_url", "username"], "{party}");
    }
    assert_eq!(call["receiver"]["username"], "bob");
    assert_eq!(call["receiver"]["first_name"], "bob first");
    assert_eq!(call["caller"]["profile_image_url"], "https://img.example/alice.png");
    app.stop().await;
}

/// A token `secret` signed for `user`, with `claims` merged in.
fn forged_token(secret: &str, user: &str, claims: Value) -> String {
    let mut body = json!({"user_id": user, "token_type": "access", "jti": "x", "exp": unix_now() + 3600});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

async fn the_authorization_matrix_holds_on_every_call_endpoint(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    let secret = ringline_tests::TEST_JWT_SECRET;
    let expired = forged_token(secret, "alice", json!({"exp": unix_now() - 10}));
    let refresh = forged_token(secret, "alice", json!({"token_type": "refresh"}));
    let wrong_signature = forged_token("another-secret", "alice", json!({}));
    // simplejwt refuses a token without `token_type` (one signed by something else).
    let untyped = {
        let body = json!({"user_id": "alice", "jti": "x", "exp": unix_now() + 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &body,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let no_expiry = {
        let body = json!({"user_id": "alice", "token_type": "access"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &body,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };

    let id = app.ring(&alice, "bob").await;
    for path in [
        format!("/api/calls/{id}/"),
        format!("/api/calls/{id}/accept/"),
        format!("/api/calls/{id}/reject/"),
        format!("/api/calls/{id}/end/"),
        "/api/calls/".to_owned(),
        "/api/calls/initiate/".to_owned(),
        "/api/turn/ice-servers/".to_owned(),
    ] {
        let method = if path.ends_with(&format!("{id}/")) || path == "/api/calls/" || path.contains("turn") {
            Method::GET
        } else {
            Method::POST
        };
        let no_token = app.send(method.clone(), &path, None, Some(json!({}))).await;
        no_token.expect_error(401, "not_authenticated");
        for bad in [&expired, &refresh, &untyped, &wrong_signature, &no_expiry, &"not.a.jwt".to_owned()] {
            let reply = app.send(method.clone(), &path, Some(bad), Some(json!({}))).await;
            reply.expect_error(401, "token_not_valid");
        }
    }

    // A third user learns nothing about the call: 404 everywhere, like a missing call.
    for action in ["", "accept/", "reject/", "end/"] {
        let method = if action.is_empty() { Method::GET } else { Method::POST };
        let reply = app.send(method, &format!("/api/calls/{id}/{action}"), Some(&eve), Some(json!({}))).await;
        reply.expect_error(404, "call_not_found");
    }
    let missing = app.get("/api/calls/999999/", &alice).await;
    missing.expect_error(404, "call_not_found");
    app.get("/api/calls/not-a-number/", &alice).await.expect_error(404, "call_not_found");

    // The caller may not accept or reject; the receiver may.
    let denied =
        app.post(&format!("/api/calls/{id}/accept/"), &alice, json!({})).await.expect_error(403, "receiver_only");
    assert_eq!(denied["detail"], "You can only accept calls where you are the receiver.");
    app.post(&format!("/api/calls/{id}/reject/"), &alice, json!({})).await.expect_error(403, "receiver_only");
    app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    // Either party may end.
    app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);
    let listing = app.get("/api/calls/", &eve).await.expect(200);
    assert_eq!(listing["count"], 0, "a third user's history does not show other people's calls");
    app.stop().await;
}

/// Rings and cancels a call from `caller` to `receiver`; returns its id.
async fn short_call(app: &TestApp, caller_token: &str, receiver: &str) -> i64 {
    let id = app.ring(caller_token, receiver).await;
    app.post(&format!("/api/calls/{id}/end/"), caller_token, json!({})).await.expect(200);
    id
}

async fn listing_is_paginated_like_django_rest_framework(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut with_bob = Vec::new();
    for _ in 0..11 {
        with_bob.push(short_call(&app, &alice, "bob").await);
    }
    let with_carol = short_call(&app, &carol, "alice").await;

    let first = app.get("/api/calls/", &alice).await.expect(200);
    assert_eq!(first["count"], 12);
    assert_eq!(first["previous"], Value::Null);
    let next = first["next"].as_str().expect("a next link");
    assert!(next.ends_with("/api/calls/?page=2"), "{next}");
    let ids: Vec<i64> =
        first["results"].as_array().expect("array").iter().map(|c| c["id"].as_i64().expect("id")).collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(ids[0], with_carol, "newest first");
    assert!(ids.windows(2).all(|pair| pair[0] > pair[1]), "{ids:?}");

    let second = app.get("/api/calls/?page=2", &alice).await.expect(200);
    assert_eq!(second["results"].as_array().expect("array").len(), 2);
    assert_eq!(second["next"], Value::Null);
    assert!(second["previous"].as_str().expect("previous").ends_with("/api/calls/?page=1"));

    app.get("/api/calls/?page=3", &alice).await.expect_error(404, "invalid_page");
    app.get("/api/calls/?page=0", &alice).await.expect_error(404, "invalid_page");
    app.get("/api/calls/?page=x", &alice).await.expect_error(404, "invalid_page");

    let only_carol = app.get("/api/calls/?user_id=carol", &alice).await.expect(200);
    assert_eq!(only_carol["count"], 1);
    assert_eq!(only_carol["results"][0]["id"], with_carol);
    let bobs = app.get("/api/calls/", &bob).await.expect(200);
    assert_eq!(bobs["count"], 11);
    let empty = app.get("/api/calls/", &app.user("dave").await).await.expect(200);
    assert_eq!(empty, json!({"count": 0, "next": null, "previous": null, "results": []}));
    app.stop().await;
}

async fn a_busy_receiver_gets_user_busy_and_a_busy_caller_caller_busy(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let first = app.ring(&alice, "bob").await;

    let busy = app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "bob"})).await;
    busy.expect_error(409, "user_busy");
    let busy = app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "alice"})).await;
    busy.expect_error(409, "user_busy");
    let caller_busy = app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "carol"})).await;
    caller_busy.expect_error(409, "caller_busy");

    app.post(&format!("/api/calls/{first}/accept/"), &bob, json!({})).await.expect(200);
    app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "bob"})).await.expect_error(409, "user_busy");
    app.post(&format!("/api/calls/{first}/end/"), &bob, json!({})).await.expect(200);
    app.post("/api/calls/initiate/", &carol, json!({"receiver_id": "bob"})).await.expect(201);
    let history = app.get("/api/calls/", &carol).await.expect(200);
    assert_eq!(history["count"], 1, "refused attempts leave no record");
    app.stop().await;
}

async fn glare_answers_the_crossing_call(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let id = app.ring(&alice, "bob").await;
    let answered = app.post("/api/calls/initiate/", &bob, json!({"receiver_id": "alice"})).await.expect(200);
    assert_eq!(answered["id"], id, "no second call");
    assert_eq!(answered["status"], "active");
    assert_eq!(answered["caller"]["id"], "alice");
    assert_eq!(app.get("/api/calls/", &bob).await.expect(200)["count"], 1);
    app.stop().await;
}

async fn bad_initiate_requests_get_the_contracts_errors(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let initiate = |body: Value| app.post("/api/calls/initiate/", &alice, body);

    let missing = initiate(json!({})).await.expect_error(400, "receiver_id_required");
    assert_eq!(missing["detail"], "receiver_id is required.");
    initiate(json!({"receiver_id": ""})).await.expect_error(400, "receiver_id_required");
    let bad_type =
        initiate(json!({"receiver_id": "bob", "call_type": "fax"})).await.expect_error(400, "invalid_call_type");
    assert_eq!(bad_type["detail"], "call_type must be 'voice' or 'video'.");
    let unknown = initiate(json!({"receiver_id": "nobody"})).await.expect_error(404, "receiver_not_found");
    assert_eq!(unknown["detail"], "Receiver not found.");
    initiate(json!({"receiver_id": 42})).await.expect_error(404, "receiver_not_found");
    initiate(json!({"receiver_id": "has space"})).await.expect_error(404, "receiver_not_found");
    initiate(json!({"receiver_id": "alice"})).await.expect_error(400, "self_call");
    initiate(json!({"receiver_id": ["bob"]})).await.expect_error(400, "parse_error");
    initiate(json!({"receiver_id": "bob", "conversation_id": "seven"}))
        .await
        .expect_error(400, "invalid_conversation_id");

    let malformed = app
        .http
        .post(format!("{}/api/calls/initiate/", app.base))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{\"receiver_id\":")
        .send()
        .await
        .expect("answer");
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Value>().await.expect("json")["code"], "parse_error");

    // Numbers and strings are the same id, and a numeric conversation id may be a string.
    app.user("7").await;
    app.conversation(3, &["alice", "7"]).await;
    let call = initiate(json!({"receiver_id": 7, "conversation_id": "3"})).await.expect(201);
    assert_eq!(call["receiver"]["id"], "7");
    assert_eq!(call["conversation"], 3);
    app.stop().await;
}

async fn conversations_are_checked(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let carol = app.user("carol").await;
    app.conversation(7, &["alice", "bob"]).await;
    {
        let app = &app;
        let initiate = |token: &str, receiver: &str, conversation: i64| {
            let body = json!({"receiver_id": receiver, "conversation_id": conversation});
            let token = token.to_owned();
            async move { app.post("/api/calls/initiate/", &token, body).await }
        };
        let missing = initiate(&alice, "bob", 8).await.expect_error(404, "conversation_not_found");
        assert_eq!(missing["detail"], "Conversation not found.");
        let outsider = initiate(&carol, "bob", 7).await.expect_error(403, "not_conversation_participant");
        assert_eq!(outsider["detail"], "You are not a participant in this conversation.");
        initiate(&alice, "carol", 7).await.expect_error(400, "receiver_not_in_conversation");
        let call = initiate(&alice, "bob", 7).await.expect(201);
        assert_eq!(call["conversation"], 7);
    }
    app.stop().await;
}

async fn ending_and_rejecting_twice_succeed_and_change_nothing(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let declined = app.ring(&alice, "bob").await;
    let first = app.post(&format!("/api/calls/{declined}/reject/"), &bob, json!({})).await.expect(200);
    assert_eq!(first["status"], "rejected");
    assert_eq!(first["end_reason"], "declined");
    let again = app.post(&format!("/api/calls/{declined}/reject/"), &bob, json!({})).await.expect(200);
    assert_eq!(again, first, "a repeated decline changes nothing");
    let end_after = app.post(&format!("/api/calls/{declined}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(end_after, first);

    let talked = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{talked}/accept/"), &bob, json!({})).await.expect(200);
    let ended = app.post(&format!("/api/calls/{talked}/end/"), &alice, json!({})).await.expect(200);
    for token in [&alice, &bob, &alice] {
        let retry = app.post(&format!("/api/calls/{talked}/end/"), token, json!({})).await.expect(200);
        assert_eq!(retry, ended, "a retried hang-up changes nothing");
    }
    let reject_ended = app.post(&format!("/api/calls/{talked}/reject/"), &bob, json!({})).await;
    let body = reject_ended.expect_error(400, "invalid_call_state");
    assert_eq!(body["detail"], "Call is already ended.");
    let accept_ended = app.post(&format!("/api/calls/{talked}/accept/"), &bob, json!({})).await;
    assert_eq!(accept_ended.expect_error(400, "invalid_call_state")["detail"], "Call is already ended.");
    app.stop().await;
}

async fn the_duration_is_measured_by_the_server(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |_| {}).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let id = app.ring(&alice, "bob").await;
    clock.advance(Duration::from_secs(4));
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    clock.advance(Duration::from_secs(93));
    let ended = app.post(&format!("/api/calls/{id}/end/"), &alice, json!({"duration_seconds": 9999})).await.expect(200);
    assert_eq!(ended["duration_seconds"], 93, "answer to hang-up, on the server's clock; the client's 9999 is ignored");
    app.stop().await;
}

async fn the_caller_ending_a_ringing_call_cancels_it(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let id = app.ring(&alice, "bob").await;
    let cancelled = app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["end_reason"], "caller_cancelled");
    assert_eq!(cancelled["duration_seconds"], Value::Null);
    assert_eq!(cancelled["answered_at"], Value::Null);
    // The receiver hanging up a ringing call declines it.
    let other = app.ring(&alice, "bob").await;
    let declined = app.post(&format!("/api/calls/{other}/end/"), &bob, json!({})).await.expect(200);
    assert_eq!(declined["status"], "rejected");
    app.stop().await;
}

async fn the_ring_timeout_turns_an_unanswered_call_to_missed(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |_| {}).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let id = app.ring(&alice, "bob").await;
    clock.advance(ringline_domain::DEFAULT_RING_TIMEOUT - Duration::from_secs(1));
    assert_eq!(app.signaling().expire_due(100).await.expect("sweep"), 0, "still within the ring timeout");
    assert_eq!(app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200)["status"], "ringing");
    clock.advance(Duration::from_secs(2));
    // The sweep the ring timer runs, now (the timer's own run may come first).
    app.signaling().expire_due(100).await.expect("sweep");
    let call = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200);
    assert_eq!(call["status"], "missed", "{call}");
    assert_eq!(call["end_reason"], "invite_timeout");
    assert_eq!(call["ended_at"], call["updated_at"]);
    // Missed frees both lines; accepting now is refused.
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect_error(400, "invalid_call_state");
    app.ring(&bob, "alice").await;
    app.stop().await;
}

async fn two_devices_accepting_at_once_have_one_winner(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..5 {
        let id = app.ring(&alice, "bob").await;
        let path = format!("/api/calls/{id}/accept/");
        let replies = futures_join(&app, &path, &bob, 6).await;
        let winners = replies.iter().filter(|reply| reply.status == 200).count();
        assert_eq!(winners, 1, "{replies:?}");
        for reply in replies.iter().filter(|reply| reply.status != 200) {
            assert_eq!(reply.status, 400);
            assert_eq!(reply.body["detail"], "Call is already active.");
        }
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    }
    app.stop().await;
}

async fn accept_racing_hang_up_leaves_a_consistent_call(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..5 {
        let id = app.ring(&alice, "bob").await;
        let (accept_path, end_path) = (format!("/api/calls/{id}/accept/"), format!("/api/calls/{id}/end/"));
        let accept = app.post(&accept_path, &bob, json!({}));
        let cancel = app.post(&end_path, &alice, json!({}));
        let (accept, cancel) = tokio::join!(accept, cancel);
        let stored = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
        assert_eq!(cancel.status, 200, "ending always succeeds");
        match stored["status"].as_str() {
            // The hang-up won while ringing: the accept lost.
            Some("cancelled") => assert_eq!(accept.status, 400),
            // The accept won, then the hang-up ended the answered call.
            Some("ended") => {
                assert_eq!(accept.status, 200);
                assert!(stored["duration_seconds"].is_u64());
            }
            other => panic!("inconsistent call after the race: {other:?} {stored}"),
        }
    }
    app.stop().await;
}

/// Sends `count` identical POSTs at once.
async fn futures_join(app: &TestApp, path: &str, token: &str, count: usize) -> Vec<ringline_tests::Reply> {
    let mut handles = Vec::new();
    for _ in 0..count {
        let http = app.http.clone();
        let url = format!("{}{path}", app.base);
        let token = token.to_owned();
        handles.push(tokio::spawn(async move {
            let response = http.post(url).bearer_auth(token).json(&json!({})).send().await.expect("answer");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            ringline_tests::Reply { status, body }
        }));
    }
    let mut replies = Vec::new();
    for handle in handles {
        replies.push(handle.await.expect("task"));
    }
    replies
}

/// `X-Forwarded-Host` and `X-Forwarded-Proto` shape pagination links only when they come from
/// a proxy the operator named (`RINGLINE_TRUSTED_PROXIES`); anyone else's are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    async fn next_link(app: &TestApp, token: &str) -> String {
        let reply = app
            .http
            .get(format!("{}/api/calls/", app.base))
            .bearer_auth(token)
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .expect("list");
        let body: Value = reply.json().await.expect("json");
        body["next"].as_str().expect("a next link").to_owned()
    }
    for trusted in [false, true] {
        let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
            if trusted {
                settings.http.trusted_proxies = vec!["127.0.0.1".parse().expect("an address")];
            }
        })
        .await;
        let alice = app.user("alice").await;
        app.user("bob").await;
        for _ in 0..11 {
            short_call(&app, &alice, "bob").await;
        }
        let next = next_link(&app, &alice).await;
        if trusted {
            assert_eq!(next, "https://evil.example/api/calls/?page=2", "from a trusted proxy");
        } else {
            assert!(next.starts_with(&format!("{}/api/calls/", app.base)), "an untrusted header is ignored: {next}");
        }
        app.stop().await;
    }
}

/// `GET /api/users/me/contacts/`: the directory's people one shares a conversation with, as
/// profiles, each once; nobody else; a token is required.
async fn contacts_are_the_people_one_shares_a_conversation_with(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    app.user("carol").await;
    app.user("mallory").await;
    app.conversation(1, &["alice", "bob"]).await;
    app.conversation(2, &["carol", "bob", "alice"]).await;
    app.conversation(3, &["bob", "mallory"]).await;

    let contacts = app.get("/api/users/me/contacts/", &alice).await.expect(200);
    let ids: Vec<&str> =
        contacts["results"].as_array().expect("a list").iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(ids, ["bob", "carol"]);
    assert_eq!(contacts["results"][0]["first_name"], "bob first");
    assert_eq!(contacts["results"][0]["profile_image_url"], "https://img.example/bob.png");
    let mallory = app.token("mallory");
    let theirs = app.get("/api/users/me/contacts/", &mallory).await.expect(200);
    assert_eq!(theirs["results"].as_array().map(Vec::len), Some(1), "{theirs}");
    app.send(Method::GET, "/api/users/me/contacts/", None, None).await.expect_error(401, "not_authenticated");
    app.stop().await;
}
