//! The OpenAPI document: a snapshot that makes every API change visible in review, a check by
//! an independent validator, and a client generated from it that drives a real call.
//!
//! The Python tools come from `tests/python/requirements.txt`; `.ci/run` installs them into
//! `target/ci-python` (or point `RINGLINE_TEST_PYTHON` at a Python that has them).

use std::path::{Path, PathBuf};
use std::process::Command;

use ringline_tests::{DatabaseBackend, TestApp};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn python_tools() -> PathBuf {
    let python = std::env::var_os("RINGLINE_TEST_PYTHON")
        .map_or_else(|| workspace_root().join("target/ci-python/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "{} is missing: run `bash .ci/run` once (it creates target/ci-python from tests/python/requirements.txt) \
         or set RINGLINE_TEST_PYTHON",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_published_document_matches_the_snapshot_in_docs() {
    let generated = ringline_server::openapi_document().await.expect("build the document");
    let snapshot_path = workspace_root().join("docs/openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot_path, format!("{generated}\n")).expect("write the snapshot");
    }
    let snapshot = std::fs::read_to_string(&snapshot_path).expect("docs/openapi.json exists");
    assert!(
        snapshot.trim_end() == generated.trim_end(),
        "the API changed: review the difference, then run `UPDATE_SNAPSHOTS=1 cargo test -p ringline-tests --test end_to_end openapi` \
         and commit docs/openapi.json"
    );
}

#[tokio::test]
async fn the_document_passes_an_independent_validator() {
    let output = Command::new(python_tools())
        .args(["-m", "openapi_spec_validator"])
        .arg(workspace_root().join("docs/openapi.json"))
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_drives_a_whole_call() {
    let python = python_tools();
    let generator = python.with_file_name("openapi-python-client");
    let scratch = std::env::temp_dir().join(format!("ringline_client_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let generated = Command::new(&generator)
        .args(["generate", "--output-path"])
        .arg(&scratch)
        .arg("--path")
        .arg(workspace_root().join("docs/openapi.json"))
        .arg("--config")
        .arg(workspace_root().join("tests/python/generator-config.yaml"))
        .output()
        .expect("run openapi-python-client");
    let log = format!("{}{}", String::from_utf8_lossy(&generated.stdout), String::from_utf8_lossy(&generated.stderr));
    assert!(generated.status.success(), "{log}");
    assert!(!log.contains("Warning"), "the generator skipped parts of the document:\n{log}");

    let app = TestApp::spawn(DatabaseBackend::Sqlite).await;
    let caller = app.user("alice").await;
    let receiver = app.user("bob").await;
    let mut driver = Command::new(&python);
    driver
        .arg(workspace_root().join("tests/python/drive_call.py"))
        .env("GENERATED_CLIENT", &scratch)
        .env("RINGLINE_URL", &app.base)
        .env("CALLER_TOKEN", &caller)
        .env("RECEIVER_TOKEN", &receiver)
        .env("RECEIVER_ID", "bob");
    // The server runs on this runtime: wait for the driver on a blocking thread.
    let driven = tokio::task::spawn_blocking(move || driver.output()).await.expect("join").expect("run the driver");
    let log = format!("{}{}", String::from_utf8_lossy(&driven.stdout), String::from_utf8_lossy(&driven.stderr));
    assert!(driven.status.success(), "{log}");

    // What the client did is what the server recorded.
    let history = app.get("/api/calls/", &caller).await.expect(200);
    assert_eq!(history["results"][0]["status"], "ended");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
}
