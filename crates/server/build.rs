//! Records the source commit for the build information metric (`ringline_build_info`): the
//! `SOURCE_COMMIT` of the build environment if set (a container build without `.git`), else
//! git's, else nothing (the metric says `unknown`). The crate sees it as `BUILD_SOURCE_COMMIT`:
//! not a `RINGLINE_` name, since cargo also sets it for the tests it runs, and the server
//! refuses `RINGLINE_` variables it does not know.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_COMMIT");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let commit = std::env::var("SOURCE_COMMIT").ok().filter(|commit| !commit.is_empty()).or_else(|| {
        let output = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    });
    let commit = commit.filter(|commit| commit.chars().all(|c| c.is_ascii_alphanumeric()));
    if let Some(commit) = &commit {
        println!("cargo:rustc-env=BUILD_SOURCE_COMMIT={commit}");
    }
    // What `ringline --version` prints after the name.
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=BUILD_VERSION_LINE={version} ({})", commit.as_deref().unwrap_or("unknown commit"));
}
