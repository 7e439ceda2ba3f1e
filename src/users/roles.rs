//! What the primary's roles need so the declared users can log in, and which login roles nobody
//! declared.
//!
//! Reads: nothing but its arguments (roles as the primary's `pg_authid` shows them). Changes:
//! nothing — pure decisions with table tests; `users::run` acts on them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::declared::AppUser;
use crate::config::Secret;

/// A role of the primary as far as logging in goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub can_login: bool,
    /// `pg_authid.rolpassword`: a SCRAM verifier, an md5 hash, or none.
    pub stored: Option<Secret>,
}

/// A change a declared user needs on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    Create {
        name: String,
    },
    /// The role exists: set the declared password (and LOGIN when it lacks it).
    Alter {
        name: String,
        add_login: bool,
    },
}

impl RoleChange {
    pub fn name(&self) -> &str {
        match self {
            RoleChange::Create { name } | RoleChange::Alter { name, .. } => name,
        }
    }
}

/// The changes that make every declared user a login role with its declared password. Roles
/// nobody declared are never in it.
pub fn plan(declared: &[AppUser], roles: &[Role]) -> Vec<RoleChange> {
    declared
        .iter()
        .filter_map(|u| match roles.iter().find(|r| r.name == u.name) {
            None => Some(RoleChange::Create {
                name: u.name.clone(),
            }),
            Some(r) => {
                let same = r
                    .stored
                    .as_ref()
                    .is_some_and(|s| password_matches(u.password.expose(), s.expose()));
                (!same || !r.can_login).then(|| RoleChange::Alter {
                    name: u.name.clone(),
                    add_login: !r.can_login,
                })
            }
        })
        .collect()
}

/// Login roles that have no pool_passwd entry: not declared, not the superuser (whose entry the
/// sidecar writes), not the replication role (which never logs in through pgpool).
pub fn undeclared(
    roles: &[Role],
    declared: &[AppUser],
    superuser: &str,
    replication_user: &str,
) -> Vec<String> {
    let mut out: Vec<String> = roles
        .iter()
        .filter(|r| r.can_login)
        .filter(|r| r.name != superuser && r.name != replication_user)
        .filter(|r| !declared.iter().any(|u| u.name == r.name))
        .map(|r| r.name.clone())
        .collect();
    out.sort();
    out
}

/// Whether `password` is the one `stored` (a `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`
/// verifier) was made from. Anything else (md5, a malformed verifier) does not match, so the
/// declared password is set again — as SCRAM.
pub fn password_matches(password: &str, stored: &str) -> bool {
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, _server_key))) =
        (params.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(stored_key)) = (
        iterations.parse::<u32>(),
        STANDARD.decode(salt),
        STANDARD.decode(stored_key),
    ) else {
        return false;
    };
    // The server's own bounds on the count (scram_iterations) keep this loop finite.
    if iterations == 0 || iterations > 1 << 24 {
        return false;
    }
    let salted = salted_password(&prepare(password), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let computed: [u8; 32] = Sha256::digest(client_key).into();
    // Not secret-dependent timing that matters here: both sides are the sidecar's own values.
    computed.as_slice() == stored_key.as_slice()
}

/// The password as PostgreSQL hashes it: SASLprep-normalised when that succeeds, else the raw
/// bytes (as the server and libpq do).
fn prepare(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// RFC 5802's Hi(): PBKDF2 with HMAC-SHA-256 and one block of output.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str) -> AppUser {
        AppUser {
            name: name.into(),
            password: Secret::new(password),
        }
    }

    fn role(name: &str, can_login: bool, password: Option<&str>) -> Role {
        Role {
            name: name.into(),
            can_login,
            stored: password
                .map(|p| Secret::new(postgres_protocol::password::scram_sha_256(p.as_bytes()))),
        }
    }

    #[test]
    fn verifiers_made_by_libpq_rules_match_only_their_password() {
        for pw in ["s3cret", "a:b 'c' \"d\" \\e", "ünïcødé pässwörd", "x"] {
            let v = postgres_protocol::password::scram_sha_256(pw.as_bytes());
            assert!(password_matches(pw, &v), "{pw}");
            assert!(!password_matches(&format!("{pw}!"), &v), "{pw}");
        }
        // Made by PostgreSQL 17.12 itself (CREATE ROLE t PASSWORD 'ünï:co''de', then
        // rolpassword), so the normalisation and the arithmetic are the server's.
        let server = "SCRAM-SHA-256$4096:SQjuAkglsSvC9A5QoYDR9w==$\
                      ZgeWYcIbmKyKUbaehiBOaZyyZJ8vJhbSAxaVLp3p7jU=:\
                      qr9hGiCYhUKwhHP/3LOauV7LKcramfYJqZIDx2If4u8=";
        assert!(password_matches("ünï:co'de", server));
        assert!(!password_matches("ünï:co''de", server));
        assert!(!password_matches("wrong", server));
        for stored in [
            "md5abc",
            "",
            "SCRAM-SHA-256$x:y$z:w",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
        ] {
            assert!(!password_matches("pw", stored), "{stored}");
        }
    }

    #[test]
    fn plan_creates_missing_and_fixes_differing_and_leaves_the_rest() {
        let declared = [user("app", "new"), user("report", "same"), user("ro", "pw")];
        let roles = [
            role("report", true, Some("same")),
            role("ro", false, Some("pw")),
            role("legacy", true, Some("whatever")),
        ];
        assert_eq!(
            plan(&declared, &roles),
            vec![
                RoleChange::Create { name: "app".into() },
                RoleChange::Alter {
                    name: "ro".into(),
                    add_login: true
                },
            ]
        );
        let changed = [role("app", true, Some("old")), role("report", true, None)];
        assert_eq!(
            plan(&declared[..2], &changed),
            vec![
                RoleChange::Alter {
                    name: "app".into(),
                    add_login: false
                },
                RoleChange::Alter {
                    name: "report".into(),
                    add_login: false
                },
            ]
        );
    }

    #[test]
    fn undeclared_lists_other_login_roles_only() {
        let roles = [
            role("postgres", true, Some("x")),
            role("replicator", true, Some("x")),
            role("app", true, Some("x")),
            role("zeta", true, None),
            role("migrator", true, Some("x")),
            role("group_only", false, None),
        ];
        assert_eq!(
            undeclared(&roles, &[user("app", "x")], "postgres", "replicator"),
            vec!["migrator".to_string(), "zeta".to_string()]
        );
    }
}
