//! schemathesis against the running server: every operation of the served OpenAPI document,
//! every check (`--checks all`: no 5xx, statuses, bodies and headers as documented, schema-valid
//! requests accepted and schema-violating ones refused, `Allow` on 405s, authentication), with
//! a user's token, the admin token, a malformed token and none.
//!
//! Bounded for CI: `RINGLINE_TEST_SCHEMATHESIS_EXAMPLES` examples per operation (default 25)
//! and a fixed seed, so a run is repeatable; set `RINGLINE_TEST_SCHEMATHESIS_SEED` (or raise
//! the examples) to look further. schemathesis comes from `tests/python/requirements.txt`;
//! `tests/python/schemathesis.toml` holds the one documented exception.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringline_tests::{DatabaseBackend, TestApp};
use secrecy::SecretString;

const ADMIN_TOKEN: &str = "schemathesis-admin-token-0123456789";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

fn schemathesis() -> PathBuf {
    let python = std::env::var_os("RINGLINE_TEST_PYTHON")
        .map_or_else(|| workspace_root().join("target/ci-python/bin/python"), PathBuf::from);
    let st = python.with_file_name("st");
    assert!(
        st.exists(),
        "{} is missing: run `bash .ci/run` once (it installs tests/python/requirements.txt into target/ci-python) \
         or set RINGLINE_TEST_PYTHON",
        st.display()
    );
    st
}

/// Which credentials the run sends.
enum Credentials {
    User,
    Admin,
    Malformed,
    None,
}

impl Credentials {
    fn label(&self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Malformed => "malformed",
            Self::None => "none",
        }
    }
}

async fn run(credentials: Credentials) {
    let app = TestApp::spawn_with(DatabaseBackend::Sqlite, |settings| {
        settings.auth.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    })
    .await;
    let alice = app.user("alice").await;
    app.user("bob").await;
    let examples = std::env::var("RINGLINE_TEST_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    let seed = std::env::var("RINGLINE_TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261204".to_owned());
    // Its scratch files (`.hypothesis/`) go to a directory of its own.
    let scratch = std::env::temp_dir().join(format!("ringline_test_st_{}_{}", std::process::id(), credentials.label()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let mut command = Command::new(schemathesis());
    command
        .current_dir(&scratch)
        .arg("--config-file")
        .arg(workspace_root().join("tests/python/schemathesis.toml"))
        .args(["--no-color", "run", &format!("{}/api/openapi.json", app.base)])
        .args(["--checks", "all", "--max-examples", &examples, "--seed", &seed, "--workers", "2"]);
    match credentials {
        Credentials::User => command.args(["-H", &format!("Authorization: Bearer {alice}")]),
        Credentials::Admin => command.args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")]),
        Credentials::Malformed => command.args(["-H", "Authorization: Bearer not.a.token"]),
        Credentials::None => &mut command,
    };
    // The server runs on this runtime: wait for schemathesis on a blocking thread.
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("run schemathesis");
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found failures:\n{log}");
    assert!(log.contains(" passed"), "schemathesis ran no test cases:\n{log}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_a_users_token() {
    run(Credentials::User).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_the_admin_token() {
    run(Credentials::Admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_a_malformed_token() {
    run(Credentials::Malformed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_without_a_token() {
    run(Credentials::None).await;
}
