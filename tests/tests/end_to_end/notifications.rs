//! A call's notification is stored with the call's change, so a client that reads its
//! notifications as soon as an event of that change arrives finds it. Before, the notification
//! was inserted after `call.incoming` was sent (and after `call.missed`): on PostgreSQL a reader
//! sometimes did not find it yet.

use ringline_tests::{DatabaseBackend, TestApp, on_both_databases};
use serde_json::{Value, json};

on_both_databases!(a_notification_is_listed_as_soon_as_its_event_arrives);

/// The newest notification of `token`'s user.
async fn newest(app: &TestApp, token: &str) -> Value {
    app.get("/api/notifications/", token).await.expect(200)["results"][0].clone()
}

async fn a_notification_is_listed_as_soon_as_its_event_arrives(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| settings.calls.ring_timeout_secs = 1).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let mut callee = app.notifications_socket(&bob).await;
    // Several rounds: the race this guards against lost about one in six.
    for _ in 0..5 {
        let id = app.ring(&alice, "bob").await;
        callee.expect("call.incoming").await;
        let listed = newest(&app, &bob).await;
        assert_eq!((listed["verb"].as_str(), listed["object_id"].as_i64()), (Some("incoming_video_call"), Some(id)));
        callee.expect("notification.created").await;
        app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
        callee.expect("call.end").await;
        callee.expect("call.cancelled").await;
    }
    let id = app.ring(&alice, "bob").await;
    callee.expect("call.incoming").await;
    callee.expect("notification.created").await;
    callee.expect("call.missed").await;
    let listed = newest(&app, &bob).await;
    assert_eq!((listed["verb"].as_str(), listed["object_id"].as_i64()), (Some("missed_video_call"), Some(id)));
    app.stop().await;
}
