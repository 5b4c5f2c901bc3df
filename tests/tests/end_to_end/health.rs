//! Health probes over real TCP, on both databases.

use ringline_tests::{DatabaseBackend, TestApp, on_both_databases, spawn_http};

on_both_databases!(probes_answer_on_a_running_server);

async fn probes_answer_on_a_running_server(backend: DatabaseBackend) {
    let app = TestApp::spawn(backend).await;
    let live = app.send(reqwest::Method::GET, "/healthz", None, None).await.expect(200);
    assert_eq!(live["status"], "ok");
    let ready = app.send(reqwest::Method::GET, "/readyz", None, None).await.expect(200);
    assert_eq!(ready["status"], "ready");
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_when_the_database_goes_away() {
    let database = ringline_storage::testing::TestDatabase::new(DatabaseBackend::Sqlite).await;
    let storage = database.storage().clone();
    let api = poem_openapi_service(storage.clone());
    let base = spawn_http(api).await;
    assert_eq!(reqwest::get(format!("{base}/readyz")).await.expect("readyz").status(), 200);

    storage.close().await.expect("close");
    let unready = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(unready.status(), 503);
    let body: serde_json::Value = unready.json().await.expect("json");
    assert_eq!(body["code"], "database_unavailable");
    assert_eq!(reqwest::get(format!("{base}/healthz")).await.expect("healthz").status(), 200, "still alive");
    database.cleanup().await;
}

fn poem_openapi_service(storage: ringline_storage::Storage) -> impl poem::Endpoint {
    ringline_api::http_conventions(poem::Route::new().nest(
        "/",
        poem_openapi::OpenApiService::new(
            ringline_api::HealthApi::new(storage, None, Default::default()),
            "health",
            "1",
        ),
    ))
}

/// Connections over the cap are answered `503 too_many_connections` at once, with
/// `Retry-After`, instead of using up the process's descriptors (1,100 half-open connections
/// once left the probes and the API unanswered); a place freed is taken again.
#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_a_freed_place_is_taken_again() {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| settings.http.max_connections = Some(20)).await;
    let address = app.base.trim_start_matches("http://").to_owned();
    // Connected and silent, as a slowloris client holds them.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(&address).await.expect("connect"));
    }
    // Let the server accept them all before the probe.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let fresh = || reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let refused = fresh().get(format!("{}/healthz", app.base)).send().await.expect("an answer, not a reset");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["code"], "too_many_connections");
    assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()));

    held.truncate(15);
    // Let the server see the closed connections (real sockets) before the next probe.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let live = fresh().get(format!("{}/healthz", app.base)).send().await.expect("healthz");
    assert_eq!(live.status(), 200, "a freed place is taken");
    drop(held);
    app.stop().await;
}

/// Behind a trusted proxy every client shares the proxy's address, so the cap per address
/// applies to the client the proxy names instead: its sockets and requests together, a socket
/// for as long as it stays open. Another client behind the same proxy is not affected.
#[tokio::test]
async fn a_client_behind_a_trusted_proxy_holds_at_most_its_share() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.http.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
        settings.http.max_connections_per_address = Some(2);
    })
    .await;
    let token = app.token("alice");
    app.user("alice").await;
    let socket_for = |client: &str| {
        let mut request =
            app.ws_url(&format!("/ws/notifications/?token={token}")).into_client_request().expect("request");
        request.headers_mut().insert("x-forwarded-for", client.parse().expect("header"));
        request
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio_tungstenite::connect_async(socket_for("198.51.100.7")).await.expect("within the share").0);
    }
    let refused = tokio_tungstenite::connect_async(socket_for("198.51.100.7")).await.expect_err("over the share");
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else { panic!("{refused:?}") };
    assert_eq!(response.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON");
    assert_eq!(body["code"], "too_many_connections_from_address");
    let plain = app.http.get(format!("{}/healthz", app.base)).header("x-forwarded-for", "198.51.100.7").send().await;
    assert_eq!(plain.expect("an answer").status(), 429, "requests count too");

    let other = tokio_tungstenite::connect_async(socket_for("198.51.100.8")).await;
    assert!(other.is_ok(), "another client behind the same proxy is not affected");
    held.pop();
    // Let the server see the closed connection (a real socket) before the next attempt.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        tokio_tungstenite::connect_async(socket_for("198.51.100.7")).await.is_ok(),
        "a closed socket frees its place"
    );
    app.stop().await;
}
