//! `ringline check-config` and `ringline config-template`: the settings as the server would
//! read them, with every problem, and a commented file of every setting with its default.

use std::fmt::Write as _;
use std::path::Path;

use crate::settings::{Overrides, Settings};

/// What `check-config` found.
#[derive(Debug)]
pub struct ConfigCheck {
    /// The effective settings, secrets redacted (none when they could not be read at all).
    pub effective: Option<String>,
    /// What keeps the server from starting.
    pub errors: Vec<String>,
    /// Push services configured but unusable (an unreadable key, say): the server starts
    /// with them off.
    pub services_off: Vec<String>,
    /// What it starts with, but an operator should know.
    pub warnings: Vec<String>,
}

impl ConfigCheck {
    /// Reads the settings as the server does (defaults, `file`, the environment, `overrides`).
    pub fn run(file: Option<&Path>, overrides: Overrides) -> Self {
        let (settings, problems) = Settings::check(file, overrides);
        let clock: std::sync::Arc<dyn ringline_domain::Clock> = std::sync::Arc::new(ringline_domain::SystemClock);
        let services_off = settings
            .as_ref()
            .map(|settings| crate::push_services::PushServices::from_settings(&settings.mobile_push, &clock).problems)
            .unwrap_or_default();
        Self {
            effective: settings.as_ref().map(effective),
            errors: problems.iter().map(ToString::to_string).collect(),
            services_off,
            warnings: settings.as_ref().map(Settings::risks).unwrap_or_default(),
        }
    }

    /// Whether the server would start with these settings, everything configured on.
    pub fn passed(&self) -> bool {
        self.errors.is_empty() && self.services_off.is_empty()
    }

    /// The report: the effective settings (unless `quiet`), then every error and warning.
    pub fn render(&self, quiet: bool) -> String {
        let mut text = String::new();
        if let (Some(effective), false) = (&self.effective, quiet) {
            text.push_str("# The effective settings (secrets redacted):\n");
            text.push_str(effective);
            text.push('\n');
        }
        for error in self.errors.iter().chain(&self.services_off) {
            let _ = writeln!(text, "error: {error}");
        }
        for warning in &self.warnings {
            let _ = writeln!(text, "warning: {warning}");
        }
        let verdict = if self.passed() {
            "the settings are valid"
        } else if self.errors.is_empty() {
            "the server would start, with the push services above off"
        } else {
            "the server would not start"
        };
        let errors = self.errors.len() + self.services_off.len();
        let _ = writeln!(text, "{verdict} ({errors} errors, {} warnings)", self.warnings.len());
        text
    }
}

/// Each setting as a line of the settings file: `key = value`, or a comment when it is not set.
fn effective(settings: &Settings) -> String {
    let values = serde_json::to_value(settings).unwrap_or_default();
    let mut text = String::new();
    for key in documented_keys() {
        match setting_line(&values, key.file) {
            Some(line) => text.push_str(&line),
            None => {
                let _ = writeln!(text, "# {} is not set", key.file);
            }
        }
    }
    text
}

/// `key = value` (a line of a settings file) when `values` sets `key`.
fn setting_line(values: &serde_json::Value, key: &str) -> Option<String> {
    values.get(key).filter(|value| !value.is_null()).map(|value| format!("{key} = {}\n", toml_value(value)))
}

/// A JSON value as TOML writes it (an inline value).
fn toml_value(value: &serde_json::Value) -> String {
    toml::Value::try_from(value).map_or_else(|_| value.to_string(), |value| value.to_string())
}

/// One setting as `docs/configuration.md` documents it.
struct DocumentedKey {
    environment: &'static str,
    file: &'static str,
    default: &'static str,
    meaning: &'static str,
}

/// The settings table of `docs/configuration.md`, in its order (a unit test keeps it complete).
fn documented_keys() -> Vec<DocumentedKey> {
    const DOCUMENT: &str = include_str!("../../../docs/configuration.md");
    DOCUMENT
        .lines()
        .filter(|line| line.starts_with("| `RINGLINE_"))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').splitn(4, '|').map(str::trim).collect();
            let unquote = |cell: &'static str| cell.trim_matches('`');
            match cells.as_slice() {
                [environment, file, default, meaning] => Some(DocumentedKey {
                    environment: unquote(environment),
                    file: unquote(file),
                    default,
                    meaning: meaning.trim_end_matches('|').trim(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// `ringline config-template`: every setting, commented, with its meaning and default, as a
/// settings file (TOML) an operator uncomments lines of.
pub fn template() -> String {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let mut text = String::from(
        "# Ringline's settings file (ringline --config FILE). Every setting, with its default:\n\
         # uncomment and change what you need. Each key may also be set in the environment as\n\
         # RINGLINE_<KEY>, which wins over this file. Check the result: ringline --config FILE check-config\n",
    );
    for key in documented_keys() {
        text.push('\n');
        for line in wrap(&plain(key.meaning), 94) {
            let _ = writeln!(text, "# {line}");
        }
        let _ = writeln!(text, "# Environment: {}. Default: {}", key.environment, plain(key.default));
        let line = setting_line(&defaults, key.file).unwrap_or_else(|| format!("{} =\n", key.file));
        let _ = write!(text, "#{line}");
    }
    text
}

/// Markdown as plain text: links become their text, emphasis goes.
fn plain(markdown: &str) -> String {
    let mut text = String::with_capacity(markdown.len());
    let mut rest = markdown;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|at| open + at) else { break };
        let Some(end) = rest[close..].find(')').map(|at| close + at) else { break };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.replace("**", "")
}

/// `text` in lines of at most `width` characters (longer words alone on their line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template documents every key the settings read, and its values are the defaults:
    /// uncommented, it is a settings file that reads back as the defaults.
    #[test]
    fn the_template_is_every_default_as_a_settings_file() {
        let template = template();
        let documented: Vec<&str> = documented_keys().iter().map(|key| key.file).collect();
        let defaults = serde_json::to_value(Settings::default()).expect("the defaults serialize");
        let serialized = defaults.as_object().expect("an object");
        for key in serialized.keys() {
            assert!(documented.contains(&key.as_str()), "{key} is not in the template");
        }
        let uncommented: String = template
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .filter(|line| line.contains(" = ") && !line.starts_with(' '))
            .map(|line| format!("{line}\n"))
            .collect();
        let file = std::env::temp_dir().join(format!("ringline-template-{}.toml", std::process::id()));
        std::fs::write(&file, &uncommented).expect("write");
        let (read, problems) = Settings::check(Some(&file), Overrides::default());
        std::fs::remove_file(&file).expect("remove");
        assert!(problems.is_empty(), "{problems:?}\n{uncommented}");
        let read = serde_json::to_value(read.expect("read")).expect("serialize");
        assert_eq!(read, defaults, "the template's values are the defaults");
    }

    #[test]
    fn secrets_never_show_and_every_problem_is_listed() {
        let mut settings =
            Settings::for_tests("postgres://ringline:hunter2@db.internal/ringline", "x".repeat(40).as_str());
        settings.auth.admin_token = Some("very-secret-admin-token".into());
        let text = effective(&settings);
        assert!(
            !text.contains("hunter2") && !text.contains(&"x".repeat(40)) && !text.contains("very-secret"),
            "{text}"
        );
        assert!(text.contains("jwt_secret = \"<redacted>\""), "{text}");
        assert!(text.contains("postgres://ringline:redacted@db.internal/ringline"), "{text}");

        settings.process.env = crate::settings::Environment::Production;
        settings.auth.jwt_secret = Some("short".into());
        settings.calls.ring_timeout_secs = 0;
        let problems: Vec<String> = settings.problems().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn markdown_becomes_plain_and_lines_wrap() {
        assert_eq!(plain("see [operations](operations.md#x) and **this**"), "see operations and this");
        assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
    }
}
