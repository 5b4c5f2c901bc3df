//! `POST /api/calls/{id}/quality/`: who may report and when, every field checked, the summary,
//! MOS and tags the call record shows, and the quality metrics. Time is driven.

use std::sync::Arc;
use std::time::Duration;

use ringline_tests::{DatabaseBackend, ManualClock, TestApp, on_both_databases};
use serde_json::{Value, json};

fn quality_path(id: i64) -> String {
    format!("/api/calls/{id}/quality/")
}

/// Alice called Bob and Bob answered; returns the tokens and the call.
async fn answered_call(app: &TestApp) -> (String, String, i64) {
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let id = app.ring(&alice, "bob").await;
    app.post(&format!("/api/calls/{id}/accept/"), &bob, json!({})).await.expect(200);
    (alice, bob, id)
}

async fn every_field_is_checked_and_only_parties_of_answered_calls_report(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, id) = answered_call(&app).await;
    let mallory = app.user("mallory").await;
    let out_of_range = [
        ("rtt_ms", json!(-1)),
        ("rtt_ms", json!(60_001)),
        ("jitter_ms", json!(-0.5)),
        ("packet_loss", json!(1.01)),
        ("packet_loss", json!(-0.01)),
        ("bitrate_in_kbps", json!(2_000_000)),
        ("bitrate_out_kbps", json!(-3)),
        ("setup_ms", json!(700_000)),
        ("mos", json!(0.9)),
        ("mos", json!(5.1)),
        ("local_candidate_type", json!("satellite")),
        ("remote_candidate_type", json!("RELAY")),
        ("protocol", json!("sctp")),
    ];
    for (field, value) in out_of_range {
        let reply = app.post(&quality_path(id), &alice, json!({ field: value })).await;
        let body = reply.expect_error(400, "invalid_quality_report");
        assert!(body["detail"].as_str().is_some_and(|detail| detail.contains(field)), "{field}: {body}");
    }
    app.post(&quality_path(id), &alice, json!({})).await.expect_error(400, "invalid_quality_report");
    app.post(&quality_path(id), &alice, json!({"rtt_ms": "fast"})).await.expect_error(400, "parse_error");
    // A stranger learns nothing: the same 404 as for a call that does not exist.
    let stranger =
        app.post(&quality_path(id), &mallory, json!({"rtt_ms": 20})).await.expect_error(404, "call_not_found");
    let missing = app.post(&quality_path(999_999), &mallory, json!({"rtt_ms": 20})).await.expect(404);
    assert_eq!(stranger, missing);
    // Never answered: nothing to report on.
    let carol = app.user("carol").await;
    let ringing = app.ring(&carol, "mallory").await;
    app.post(&quality_path(ringing), &carol, json!({"rtt_ms": 20})).await.expect_error(409, "call_not_answered");
    // The parties may.
    let taken = app.post(&quality_path(id), &bob, json!({"rtt_ms": 20, "protocol": "udp"})).await.expect(202);
    assert_eq!(taken["receiver"]["reports"], 1);
    assert_eq!(taken["caller"], Value::Null);
    app.stop().await;
}

async fn the_record_shows_the_summary_the_mos_and_the_tags(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, id) = answered_call(&app).await;
    let record = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200);
    assert_eq!(record["quality"], Value::Null, "null until a report arrives");

    let clean = json!({
        "rtt_ms": 40, "jitter_ms": 4, "packet_loss": 0.0, "bitrate_in_kbps": 48, "bitrate_out_kbps": 52,
        "local_candidate_type": "host", "remote_candidate_type": "srflx", "protocol": "udp", "setup_ms": 850,
        "mos": 4.4
    });
    app.post(&quality_path(id), &alice, clean).await.expect(202);
    let later = json!({"rtt_ms": 60, "jitter_ms": 6, "packet_loss": 0.002, "setup_ms": 10});
    app.post(&quality_path(id), &alice, later).await.expect(202);
    // Bob's side goes through a relay over a bad network.
    let bad = json!({"rtt_ms": 500, "jitter_ms": 50, "packet_loss": 0.2, "local_candidate_type": "relay",
                     "remote_candidate_type": "srflx", "protocol": "tcp"});
    app.post(&quality_path(id), &bob, bad).await.expect(202);

    let quality = app.get(&format!("/api/calls/{id}/"), &bob).await.expect(200)["quality"].clone();
    let caller = &quality["caller"];
    assert_eq!(caller["reports"], 2);
    assert_eq!((caller["rtt_ms"].as_f64(), caller["jitter_ms"].as_f64()), (Some(50.0), Some(5.0)), "means");
    assert_eq!(caller["packet_loss"].as_f64(), Some(0.001));
    assert_eq!(caller["setup_ms"].as_f64(), Some(850.0), "the first setup time");
    assert_eq!(
        (caller["local_candidate_type"].as_str(), caller["remote_candidate_type"].as_str()),
        (Some("host"), Some("srflx"))
    );
    assert_eq!(caller["client_mos"].as_f64(), Some(4.4));
    // E-model: delay 25 + 10 = 35 ms effective, R = 100 - 35/40 - 0.25 = 98.875.
    assert_eq!(caller["mos"].as_f64(), Some(4.49));
    // Bob: delay 250 + 100 = 350 ms, R = 100 - 23 - 50 = 27, MOS 1.49.
    assert_eq!(quality["receiver"]["mos"].as_f64(), Some(1.49));
    assert_eq!(quality["mos"].as_f64(), Some(1.49), "the worse party's");
    assert_eq!(quality["tags"], json!(["high_rtt", "high_jitter", "high_packet_loss", "low_mos", "relayed"]));

    // The list shows the same, and the end response keeps it.
    let listed = app.get("/api/calls/", &alice).await.expect(200);
    assert_eq!(listed["results"][0]["quality"], quality);
    let ended = app.post(&format!("/api/calls/{id}/end/"), &alice, json!({})).await.expect(200);
    assert_eq!(ended["quality"], quality);
    app.stop().await;
}

async fn reports_are_bounded_in_rate_and_in_time(backend: DatabaseBackend) {
    let clock = Arc::new(ManualClock::new());
    let app = TestApp::spawn_on_clock(backend, &clock, |_| {}).await;
    let (alice, bob, id) = answered_call(&app).await;
    for _ in 0..6 {
        app.post(&quality_path(id), &alice, json!({"rtt_ms": 30})).await.expect(202);
    }
    let refused = app.post(&quality_path(id), &alice, json!({"rtt_ms": 30})).await;
    assert_eq!(refused.status.as_u16(), 429);
    refused.expect_error(429, "too_many_quality_reports");
    // Bob has his own budget; a minute later Alice has hers again.
    app.post(&quality_path(id), &bob, json!({"rtt_ms": 30})).await.expect(202);
    clock.advance(Duration::from_secs(61));
    app.post(&quality_path(id), &alice, json!({"rtt_ms": 30})).await.expect(202);

    // The final report comes after the hangup; ten minutes later none is taken.
    app.post(&format!("/api/calls/{id}/end/"), &bob, json!({})).await.expect(200);
    clock.advance(Duration::from_secs(5));
    app.post(&quality_path(id), &bob, json!({"rtt_ms": 30})).await.expect(202);
    clock.advance(Duration::from_secs(10 * 60));
    app.post(&quality_path(id), &bob, json!({"rtt_ms": 30})).await.expect_error(409, "quality_report_too_late");
    app.stop().await;
}

/// Two reports at once from the two parties (two instances' worth of racing writers): both are
/// kept, none overwrites the other.
async fn reports_at_once_are_all_kept(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let (alice, bob, id) = answered_call(&app).await;
    let path = quality_path(id);
    let (first, second, third, fourth) = tokio::join!(
        app.post(&path, &alice, json!({"rtt_ms": 10})),
        app.post(&path, &bob, json!({"rtt_ms": 20})),
        app.post(&path, &alice, json!({"rtt_ms": 30})),
        app.post(&path, &bob, json!({"rtt_ms": 40})),
    );
    for reply in [first, second, third, fourth] {
        reply.expect(202);
    }
    let quality = app.get(&format!("/api/calls/{id}/"), &alice).await.expect(200)["quality"].clone();
    assert_eq!((quality["caller"]["reports"].as_u64(), quality["receiver"]["reports"].as_u64()), (Some(2), Some(2)));
    assert_eq!(
        (quality["caller"]["rtt_ms"].as_f64(), quality["receiver"]["rtt_ms"].as_f64()),
        (Some(20.0), Some(30.0))
    );
    app.stop().await;
}

async fn reports_and_tags_are_counted_in_the_metrics(backend: DatabaseBackend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let (alice, bob, id) = answered_call(&app).await;
    let relayed = json!({"rtt_ms": 450, "jitter_ms": 10, "packet_loss": 0.01, "local_candidate_type": "relay"});
    app.post(&quality_path(id), &alice, relayed.clone()).await.expect(202);
    app.post(&quality_path(id), &alice, relayed).await.expect(202);
    app.post(&quality_path(id), &bob, json!({"rtt_ms": 40, "remote_candidate_type": "host"})).await.expect(202);
    app.post(&quality_path(id), &bob, json!({"mos": 4.1})).await.expect(202);
    let scrape = app.scrape().await;
    assert_eq!(scrape.value("ringline_call_quality_reports_total", &[("candidate_type", "relay")]), 2.0);
    assert_eq!(scrape.value("ringline_call_quality_reports_total", &[("candidate_type", "host")]), 1.0);
    assert_eq!(scrape.value("ringline_call_quality_reports_total", &[("candidate_type", "unknown")]), 1.0);
    assert_eq!(scrape.observations("ringline_call_rtt_seconds", &[]), 3.0);
    assert!((scrape.value("ringline_call_rtt_seconds_sum", &[]) - 0.94).abs() < 1e-9);
    assert_eq!(scrape.observations("ringline_call_jitter_seconds", &[]), 2.0);
    assert_eq!(scrape.observations("ringline_call_packet_loss_ratio", &[]), 2.0);
    assert_eq!(scrape.observations("ringline_call_mos", &[]), 4.0);
    // Each tag once per call, however many reports earn it.
    assert_eq!(scrape.value("ringline_call_quality_tags_total", &[("tag", "high_rtt")]), 1.0);
    assert_eq!(scrape.value("ringline_call_quality_tags_total", &[("tag", "relayed")]), 1.0);
    assert_eq!(scrape.value("ringline_call_quality_tags_total", &[("tag", "low_mos")]), 0.0);

    // A call that ends for ice_failed is tagged with no report at all.
    let (carol, dave) = (app.user("carol").await, app.user("dave").await);
    let failed = app.ring(&carol, "dave").await;
    app.post(&format!("/api/calls/{failed}/accept/"), &dave, json!({})).await.expect(200);
    let mut socket = app.notifications_socket(&carol).await;
    socket.send_json(json!({"type": "call.end", "call_id": failed.to_string(), "reason": "ice_failed"})).await;
    let record = loop {
        let record = app.get(&format!("/api/calls/{failed}/"), &carol).await.expect(200);
        if record["status"] == "ended" {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(record["quality"]["tags"], json!(["ice_failure"]));
    assert_eq!(app.scrape().await.value("ringline_call_quality_tags_total", &[("tag", "ice_failure")]), 1.0);
    app.stop().await;
}

on_both_databases!(
    every_field_is_checked_and_only_parties_of_answered_calls_report,
    the_record_shows_the_summary_the_mos_and_the_tags,
    reports_are_bounded_in_rate_and_in_time,
    reports_at_once_are_all_kept,
    reports_and_tags_are_counted_in_the_metrics,
);
