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
    ringline_api::http_conventions(
        poem::Route::new()
            .nest("/", poem_openapi::OpenApiService::new(ringline_api::HealthApi::new(storage, None), "health", "1")),
    )
}
