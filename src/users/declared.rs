//! The declared application users: the text of `PGPOOL_SIDECAR_USERS` or of the users file,
//! read into `name`/`password` pairs.
//!
//! Reads: nothing but its argument. Changes: nothing — pure, so every format rule has a table
//! test. Messages name the entry (line number, role name), never a password.
//!
//! The format, as the README documents it:
//! - one `name:password` per line; the name ends at the first `:`, the password is everything
//!   after it, as it stands (spaces, `:`, quotes, backslashes, any UTF-8);
//! - empty lines and lines starting with `#` are skipped; a trailing carriage return (a file
//!   written on Windows) is dropped;
//! - in the variable only, and only when it holds no newline, commas separate entries when every
//!   comma-separated piece is itself `name:…` with a plain name (letters, digits, `_`, `-`, `.`,
//!   `$`); otherwise the commas belong to a password. A password that contains `,name:` must be
//!   on a line of its own (a multi-line variable or the file).

use crate::config::Secret;
use crate::pgpool::conf::{pool_passwd_password_problem, pool_passwd_user_problem};

/// PostgreSQL keeps at most this many bytes of an identifier (NAMEDATALEN - 1); a longer name
/// would be cut there and never match its pool_passwd entry.
const MAX_ROLE_NAME: usize = 63;

/// One declared user.
#[derive(Clone, PartialEq, Eq)]
pub struct AppUser {
    pub name: String,
    pub password: Secret,
}

impl std::fmt::Debug for AppUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppUser")
            .field("name", &self.name)
            .field("password", &self.password)
            .finish()
    }
}

/// Where the text came from: the file has lines only; the variable may use commas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Variable,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    #[error("{entry}: {problem}")]
    Entry { entry: String, problem: String },
    #[error("{entry}: user {name:?} is declared twice")]
    Duplicate { entry: String, name: String },
    #[error("{entry}: {name:?} {why}; it cannot be declared as an application user")]
    Reserved {
        entry: String,
        name: String,
        why: &'static str,
    },
}

/// Role names the sidecar manages itself and that may not be redeclared, with why.
pub struct Reserved<'a> {
    pub superuser: &'a str,
    pub replication_user: &'a str,
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
}

/// The entries of `text` with the label each error names them by.
fn entries(text: &str, origin: Origin) -> Vec<(String, &str)> {
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let single_line = !text.trim_end_matches(['\n', '\r']).contains('\n');
    if origin == Origin::Variable && single_line {
        if let [(_, line)] = lines.as_slice() {
            let pieces: Vec<&str> = line.split(',').collect();
            let all_entries = pieces.len() > 1
                && pieces
                    .iter()
                    .all(|p| p.split_once(':').is_some_and(|(n, _)| plain_name(n)));
            if all_entries {
                return pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (format!("entry {}", i + 1), p))
                    .collect();
            }
        }
    }
    lines
        .into_iter()
        .map(|(n, l)| (format!("line {n}"), l))
        .collect()
}

/// Reads the declared users from `text`. Every problem is reported, the first one returned.
pub fn parse(
    text: &str,
    origin: Origin,
    reserved: &Reserved<'_>,
) -> Result<Vec<AppUser>, DeclarationError> {
    let mut users: Vec<AppUser> = Vec::new();
    for (entry, raw) in entries(text, origin) {
        let bad = |problem: String| DeclarationError::Entry {
            entry: entry.clone(),
            problem,
        };
        let Some((name, password)) = raw.split_once(':') else {
            return Err(bad(
                "has no ':' between the user name and the password".into()
            ));
        };
        if name.is_empty() {
            return Err(bad("has no user name before the ':'".into()));
        }
        if name.trim() != name {
            return Err(bad(format!(
                "user name {name:?} starts or ends with white space"
            )));
        }
        if let Some(problem) = pool_passwd_user_problem(name) {
            return Err(bad(format!("user name {problem}")));
        }
        if name.len() > MAX_ROLE_NAME {
            return Err(bad(format!(
                "user name is longer than the {MAX_ROLE_NAME} bytes PostgreSQL keeps of a role name"
            )));
        }
        if password.is_empty() {
            return Err(bad(format!("user {name:?} has an empty password")));
        }
        if let Some(problem) = pool_passwd_password_problem(password) {
            return Err(bad(format!("the password of user {name:?} {problem}")));
        }
        let why = if name == reserved.superuser {
            Some(
                "is the superuser (PGPOOL_SIDECAR_SUPERUSER), whose password is SUPERUSER_PASSWORD",
            )
        } else if name == reserved.replication_user {
            Some("is the replication user (PGPOOL_SIDECAR_REPLICATION_USER)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(DeclarationError::Reserved {
                entry,
                name: name.to_string(),
                why,
            });
        }
        if users.iter().any(|u| u.name == name) {
            return Err(DeclarationError::Duplicate {
                entry,
                name: name.to_string(),
            });
        }
        users.push(AppUser {
            name: name.to_string(),
            password: Secret::new(password.to_string()),
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Reserved<'static> = Reserved {
        superuser: "postgres",
        replication_user: "replicator",
    };

    type Pairs = Result<Vec<(String, String)>, String>;

    fn pairs(text: &str, origin: Origin) -> Pairs {
        parse(text, origin, &R)
            .map(|us| {
                us.into_iter()
                    .map(|u| (u.name, u.password.expose().to_string()))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    fn ok(list: &[(&str, &str)]) -> Pairs {
        Ok(list
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_string()))
            .collect())
    }

    #[test]
    fn entries_passwords_and_separators() {
        use Origin::*;
        let cases: &[(&str, Origin, Pairs)] = &[
            ("", Variable, ok(&[])),
            ("app:s3cret", Variable, ok(&[("app", "s3cret")])),
            // Everything after the first ':' is the password, as it stands.
            (
                "app:a:b 'c' \"d\" \\e ünï",
                Variable,
                ok(&[("app", "a:b 'c' \"d\" \\e ünï")]),
            ),
            (
                "app:x,report:y",
                Variable,
                ok(&[("app", "x"), ("report", "y")]),
            ),
            // A piece without `name:` makes the commas part of the password.
            ("app:pass,word", Variable, ok(&[("app", "pass,word")])),
            ("app:a, b:c", Variable, ok(&[("app", "a, b:c")])),
            // Lines: commas are never separators there.
            (
                "app:x,report:y\nother:z\n",
                Variable,
                ok(&[("app", "x,report:y"), ("other", "z")]),
            ),
            ("app:x,report:y", File, ok(&[("app", "x,report:y")])),
            (
                "# users\n\napp:one\r\nreport:two\n",
                File,
                ok(&[("app", "one"), ("report", "two")]),
            ),
            ("app: leading space", File, ok(&[("app", " leading space")])),
        ];
        for (text, origin, want) in cases {
            assert_eq!(&pairs(text, *origin), want, "{text:?} {origin:?}");
        }
    }

    #[test]
    fn refusals_name_the_entry_and_never_the_password() {
        use Origin::*;
        let cases: &[(&str, Origin, &str)] = &[
            ("app", File, "line 1: has no ':'"),
            ("ok:1\n:pw", File, "line 2: has no user name"),
            ("app:", File, "line 1: user \"app\" has an empty password"),
            (" app:pw", File, "starts or ends with white space"),
            (
                "app:pw\napp:other",
                File,
                "line 2: user \"app\" is declared twice",
            ),
            ("a:x,a:y", Variable, "entry 2: user \"a\" is declared twice"),
            ("postgres:pw", File, "is the superuser"),
            ("replicator:pw", Variable, "is the replication user"),
        ];
        for (text, origin, want) in cases {
            let got = pairs(text, *origin).unwrap_err();
            assert!(got.contains(want), "{text:?}: {got}");
            assert!(!got.contains("pw\"") && !got.contains(":pw"), "{got}");
        }
        let long_name = format!("{}:pw", "n".repeat(64));
        assert!(pairs(&long_name, File).unwrap_err().contains("63 bytes"));
        let long_password = format!("app:{}", "p".repeat(125));
        let got = pairs(&long_password, File).unwrap_err();
        assert!(got.contains("124 bytes") && !got.contains("ppp"), "{got}");
    }
}
