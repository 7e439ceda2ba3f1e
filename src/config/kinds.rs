//! The rules every setting of one kind shares, so the table in `settings.rs` names only a
//! setting's parser and default.
//!
//! Reads: the sidecar's variables (name without [`ENV_PREFIX`]) and the files named by the
//! `_FILE` forms of secrets. Changes: the problem list of the [`Checker`].
//!
//! Each function returns the value for [`Earlier`]: `None` only after a problem was recorded,
//! so a later setting can tell "invalid" from "default".

use std::collections::BTreeMap;

use super::settings::Earlier;
use super::source::read_secret_file;
use super::{Checker, Secret, UsersInput, ENV_PREFIX};

/// The sidecar's variables, keyed by the name after [`ENV_PREFIX`].
pub(super) type Vars = BTreeMap<String, String>;

/// What a parser reports: one message, or one per bad item of a list.
pub(super) trait Messages {
    fn into_messages(self) -> Vec<String>;
}

impl Messages for String {
    fn into_messages(self) -> Vec<String> {
        vec![self]
    }
}

impl Messages for Vec<String> {
    fn into_messages(self) -> Vec<String> {
        self
    }
}

/// The trimmed value; `None` when unset or blank, which means "use the default".
fn given<'v>(vars: &'v Vars, name: &str) -> Option<&'v str> {
    vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn record<T, E: Messages>(ck: &mut Checker, name: &str, parsed: Result<T, E>) -> Option<T> {
    match parsed {
        Ok(value) => Some(value),
        Err(messages) => {
            for message in messages.into_messages() {
                ck.problem(name, message);
            }
            None
        }
    }
}

/// A setting with a default, which also stands in for an invalid value so later checks still
/// run.
pub(super) fn value<T, E: Messages>(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    _: &Earlier,
    parse: impl FnOnce(&str) -> Result<T, E>,
    default: T,
) -> Option<T> {
    let parsed = given(vars, name).and_then(|v| record(ck, name, parse(v)));
    Some(parsed.unwrap_or(default))
}

/// A setting that is off (`None`) unless given.
pub(super) fn optional<T, E: Messages>(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    _: &Earlier,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<Option<T>> {
    Some(given(vars, name).and_then(|v| record(ck, name, parse(v))))
}

/// Like [`value`], for a setting whose parser or default depends on settings above it.
pub(super) fn after<T, E: Messages>(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    earlier: &Earlier,
    parse: impl FnOnce(&str, &Earlier) -> Result<T, E>,
    default: impl FnOnce(&Earlier) -> T,
) -> Option<T> {
    let parsed = given(vars, name).and_then(|v| record(ck, name, parse(v, earlier)));
    Some(parsed.unwrap_or_else(|| default(earlier)))
}

/// A setting without a default; `missing` and `empty` tell the operator what to write.
pub(super) fn required<T, E: Messages>(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    _: &Earlier,
    parse: impl FnOnce(&str) -> Result<T, E>,
    missing: &str,
    empty: &str,
) -> Option<T> {
    match vars.get(name).map(|v| v.trim()) {
        None => {
            ck.problem(name, missing);
            None
        }
        Some("") => {
            ck.problem(name, empty);
            None
        }
        Some(v) => record(ck, name, parse(v)),
    }
}

/// A required secret, from `name` or `name_FILE`. `fits` is asked only about a value that was
/// read; its answer must not contain the value.
pub(super) fn secret(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    earlier: &Earlier,
    fits: impl FnOnce(&str, &Earlier) -> Option<String>,
) -> Option<Secret> {
    let was_set_empty = vars.get(name).is_some_and(String::is_empty);
    match secret_input(ck, vars, name) {
        SecretInput::Given { value, var, path } => {
            if value.is_empty() {
                match path {
                    Some(path) => ck.problem(&var, format!("file {path} is empty")),
                    None => ck.problem(&var, "is empty"),
                }
            } else if let Some(message) = fits(&value, earlier) {
                ck.problem(&var, message);
            }
            Some(Secret::new(value))
        }
        SecretInput::Absent if was_set_empty => {
            ck.problem(name, "is empty");
            None
        }
        SecretInput::Absent => {
            ck.problem(
                name,
                format!("is required (set it or {ENV_PREFIX}{name}_FILE)"),
            );
            None
        }
        SecretInput::Failed => None,
    }
}

/// A secret whose absence switches something off; an empty value or file counts as absent.
pub(super) fn optional_secret(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    earlier: &Earlier,
    fits: impl FnOnce(&str, &Earlier) -> Option<String>,
) -> Option<Option<Secret>> {
    match secret_input(ck, vars, name) {
        SecretInput::Given { value, .. } if value.is_empty() => Some(None),
        SecretInput::Given { value, var, .. } => {
            if let Some(message) = fits(&value, earlier) {
                ck.problem(&var, message);
            }
            Some(Some(Secret::new(value)))
        }
        SecretInput::Absent | SecretInput::Failed => Some(None),
    }
}

/// The declared application users, from `name` or from the file `name_FILE` names; neither
/// means none. `fits` gets the text and whether it came from the file; its answer must not
/// contain a password. An empty file is allowed: users may be added to it later.
pub(super) fn users(
    ck: &mut Checker,
    vars: &Vars,
    name: &str,
    earlier: &Earlier,
    fits: impl FnOnce(&str, bool, &Earlier) -> Option<String>,
) -> Option<Option<UsersInput>> {
    match secret_input(ck, vars, name) {
        SecretInput::Given { value, var, path } => {
            if let Some(message) = fits(&value, path.is_some(), earlier) {
                ck.problem(&var, message);
            }
            Some(Some(UsersInput {
                text: Secret::new(value),
                file: path.map(Into::into),
            }))
        }
        SecretInput::Absent => Some(None),
        SecretInput::Failed => None,
    }
}

/// Where a secret came from, so messages can name the variable the operator has to fix.
enum SecretInput {
    Absent,
    /// Already reported (conflict or unreadable file).
    Failed,
    Given {
        value: String,
        /// The variable it was read from (`X` or `X_FILE`) and, for a file, its path.
        var: String,
        path: Option<String>,
    },
}

fn secret_input(ck: &mut Checker, vars: &Vars, name: &str) -> SecretInput {
    let file_var = format!("{name}_FILE");
    // An empty variable counts as unset so `X: ${X:-}` in compose does not clash with X_FILE.
    let direct = vars.get(name).filter(|v| !v.is_empty());
    let file = vars
        .get(&file_var)
        .map(|f| f.trim())
        .filter(|f| !f.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => {
            ck.problem(
                name,
                format!("is set together with {ENV_PREFIX}{file_var}; set only one"),
            );
            SecretInput::Failed
        }
        (Some(value), None) => SecretInput::Given {
            value: value.clone(),
            var: name.to_owned(),
            path: None,
        },
        (None, Some(path)) => match read_secret_file(path) {
            Ok(value) => SecretInput::Given {
                value,
                var: file_var,
                path: Some(path.to_owned()),
            },
            Err(message) => {
                ck.problem(&file_var, message);
                SecretInput::Failed
            }
        },
        (None, None) => SecretInput::Absent,
    }
}
