//! The error catalogue (`ringline_domain::ErrorCode`) is the only place a code is written, and
//! every code is documented: REST codes in `docs/api.md`, the codes sockets send in
//! `docs/protocol.md`'s error table. Clients branch on codes, so an undocumented one is a
//! contract nobody can read, and one written by hand elsewhere can drift from the catalogue.

use std::path::{Path, PathBuf};

use ringline_domain::ErrorCode;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace holds tests/").to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The sources that ship: every crate's `src/`, without the unit tests at the end of a file.
fn shipped_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(workspace().join("crates")).expect("crates/").flatten() {
        rust_files(&krate.path().join("src"), &mut files);
    }
    files
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let shipped = text.split("#[cfg(test)]").next().unwrap_or_default().to_owned();
            (path, shipped)
        })
        .collect()
}

#[test]
fn no_error_code_is_written_outside_the_catalogue() {
    let catalogue = workspace().join("crates/domain/src/error_codes.rs");
    let mut written = Vec::new();
    for (path, text) in shipped_sources() {
        if path == catalogue {
            continue;
        }
        for code in ErrorCode::ALL {
            // Not an error: the `end_reason` of the `call.end` that stops the callee's other
            // devices ringing, which the error of the same name then explains.
            if path.ends_with("crates/signaling/src/events.rs") && *code == ErrorCode::AnsweredElsewhere {
                continue;
            }
            if text.contains(&format!("\"{}\"", code.as_str())) {
                written.push(format!("{} writes \"{}\"", path.display(), code.as_str()));
            }
        }
    }
    written.dedup();
    assert!(written.is_empty(), "use ringline_domain::ErrorCode instead:\n{}", written.join("\n"));
}

#[test]
fn every_rest_code_is_in_the_api_docs() {
    let api = read(&workspace().join("docs/api.md"));
    let protocol = read(&workspace().join("docs/protocol.md"));
    let missing: Vec<_> = ErrorCode::ALL
        .iter()
        .map(|code| format!("`{}`", code.as_str()))
        .filter(|code| !api.contains(code) && !protocol.contains(code))
        .collect();
    assert!(missing.is_empty(), "codes in no doc: {missing:?}");
}

#[test]
fn every_code_a_socket_sends_is_in_the_protocol_docs() {
    let protocol = read(&workspace().join("docs/protocol.md"));
    let table = &protocol[protocol.find("### Errors").expect("protocol.md has an Errors section")..];
    let table = &table[..table.find("\n## ").unwrap_or(table.len())];
    // What the signaling crate names, and what the shared mapping gives a refused call action.
    let signaling: String = shipped_sources()
        .into_iter()
        .filter(|(path, _)| path.starts_with(workspace().join("crates/signaling")))
        .map(|(_, text)| text)
        .collect();
    let call_actions = [
        ErrorCode::CallNotFound,
        ErrorCode::InvalidCallState,
        ErrorCode::ReceiverOnly,
        ErrorCode::CallConflict,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::InternalError,
    ];
    let missing: Vec<_> = ErrorCode::ALL
        .iter()
        .filter(|code| call_actions.contains(code) || signaling.contains(&format!("ErrorCode::{code:?}")))
        .map(|code| format!("`{}`", code.as_str()))
        .filter(|code| !table.contains(code))
        .collect();
    assert!(missing.is_empty(), "codes sockets send that protocol.md's error table lacks: {missing:?}");
}
