//! What ships beside the binary, checked against it: the deployment files set only settings the
//! server knows, the compose file is valid YAML, and `check-config` / `config-template` do what
//! docs/configuration.md says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `ringline` with only `env` in its environment (nothing the test runner has leaks in).
fn ringline(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringline"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run ringline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every `RINGLINE_…` name in `file`.
fn settings_named_in(file: &str) -> BTreeSet<String> {
    let content = std::fs::read_to_string(workspace().join(file)).expect("the file");
    content
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("RINGLINE_") && word.len() > "RINGLINE_".len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_deployment_files_set_only_known_settings() {
    for file in ["deploy/compose.yaml", "deploy/Dockerfile", "deploy/debian/ringline.env"] {
        let names = settings_named_in(file);
        assert!(names.len() >= 4, "{file} names settings: {names:?}");
        // A value that parses for any setting is not needed: an unknown name is reported
        // whatever the values, each on its own line.
        let env: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "0")).collect();
        let checked = ringline(&env, &["check-config", "--quiet"]);
        let report = text(&checked.stdout);
        assert!(!report.contains("unknown setting"), "{file} sets a setting the server does not know:\n{report}");
    }
}

#[test]
fn the_compose_file_is_valid_yaml() {
    let python = std::env::var_os("RINGLINE_TEST_PYTHON")
        .map_or_else(|| workspace().join("target/ci-python/bin/python"), PathBuf::from);
    assert!(python.exists(), "{} is missing: run `bash .ci/run` once", python.display());
    let compose = workspace().join("deploy/compose.yaml");
    let parse = "import sys, yaml; doc = yaml.safe_load(open(sys.argv[1])); \
                 assert {'postgres', 'redis', 'coturn', 'ringline-a', 'ringline-b', 'proxy', 'prometheus'} <= set(doc['services'])";
    let parsed = Command::new(python).args(["-c", parse]).arg(&compose).output().expect("run python");
    assert!(parsed.status.success(), "{}", text(&parsed.stderr));
}

#[test]
fn check_config_lists_every_problem_and_never_a_secret() {
    let bad = [
        ("RINGLINE_ENV", "production"),
        ("RINGLINE_RING_TIMOUT_SECS", "30"),
        ("RINGLINE_WS_PING_INTERVAL_SECS", "0"),
        ("RINGLINE_TURN_URLS", "turn:turn.example.org:3478"),
        ("RINGLINE_ADMIN_TOKEN", "an-admin-token-nobody-may-read"),
        ("RINGLINE_DATABASE_URL", "postgres://ringline:db-password-nobody-may-read@db.internal/ringline"),
    ];
    let checked = ringline(&bad, &["check-config"]);
    let report = text(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    for expected in [
        "error: unknown setting RINGLINE_RING_TIMOUT_SECS; did you mean RINGLINE_RING_TIMEOUT_SECS?",
        "error: RINGLINE_JWT_SECRET must be set",
        "RINGLINE_WS_PING_INTERVAL_SECS",
        "warning: RINGLINE_TURN_URLS is set but RINGLINE_TURN_SECRET is not",
        "admin_token = \"<redacted>\"",
        "postgres://ringline:redacted@db.internal/ringline",
        "the server would not start",
    ] {
        assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
    }
    assert!(!report.contains("nobody-may-read"), "a secret in the report:\n{report}");

    let good = [("RINGLINE_ENV", "production"), ("RINGLINE_JWT_SECRET", "a-real-secret-of-at-least-32-bytes-0123")];
    let checked = ringline(&good, &["check-config", "--quiet"]);
    let report = text(&checked.stdout);
    assert_eq!(checked.status.code(), Some(0), "{report}");
    assert!(report.contains("the settings are valid"), "{report}");
    assert!(!report.contains("jwt_secret"), "--quiet prints only the problems:\n{report}");
}

#[test]
fn the_config_template_is_a_settings_file_of_the_defaults() {
    let template = ringline(&[], &["config-template"]);
    assert!(template.status.success());
    let template = text(&template.stdout);
    // Uncommented, it is a settings file the server reads without a problem.
    let uncommented: String = template
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| line.contains(" = ") && !line.starts_with(' '))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(uncommented.contains("ring_timeout_secs = 28"), "{template}");
    let file = std::env::temp_dir().join(format!("ringline-template-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, uncommented).expect("write");
    let checked = ringline(&[], &["--config", &file.display().to_string(), "check-config", "--quiet"]);
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked.stdout));
    // No secret has a default, so none is written.
    assert!(template.contains("#jwt_secret =\n"), "{template}");
}

#[test]
fn the_version_names_the_commit() {
    let version = ringline(&[], &["--version"]);
    let version = text(&version.stdout);
    assert!(version.starts_with(&format!("ringline {} (", env!("CARGO_PKG_VERSION"))), "{version}");
}
