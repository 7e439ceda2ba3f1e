//! Which pgpool-II the image carries: asked once at start (`pgpool --version`), because setting
//! names differ between the versions we support (4.3 in bookworm, 4.6 in trixie, 4.7 in sid) and
//! pgpool.conf must use the names the running one reads.
//!
//! Reads: the output of `pgpool --version`. Changes: nothing.

use std::fmt;
use std::process::Command;
use std::time::Duration;

use crate::reaper::Reaper;

/// A pgpool-II release, e.g. 4.6.1. A pre-release (`4.6beta1`, `4.8devel`) counts as its `.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgpoolVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PgpoolVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        PgpoolVersion {
            major,
            minor,
            patch,
        }
    }

    /// The oldest release whose settings pgpool_conf knows: 4.3 is the first with
    /// `backend_clustering_mode` and `failover_on_backend_shutdown`, both of which we write.
    pub const OLDEST_SUPPORTED: PgpoolVersion = PgpoolVersion::new(4, 3, 0);

    /// The newest release line whose settings were checked against its source (4.7). A newer one
    /// is rendered as this one, with a warning at start.
    pub const NEWEST_KNOWN: PgpoolVersion = PgpoolVersion::new(4, 7, 0);

    /// Whether this release is `major.minor` or later, whatever its patch level.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// Whether a release line newer than [`Self::NEWEST_KNOWN`] runs (its new settings or renames
    /// are unknown to us).
    pub fn newer_than_known(self) -> bool {
        (self.major, self.minor) > (Self::NEWEST_KNOWN.major, Self::NEWEST_KNOWN.minor)
    }
}

impl fmt::Display for PgpoolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("cannot run `pgpool --version`: {0}")]
    NotRun(String),
    #[error("`pgpool --version` exited with status {code}: {output:?}")]
    Failed { code: i32, output: String },
    #[error("`pgpool --version` printed no pgpool-II version: {output:?}")]
    Unrecognised { output: String },
    #[error(
        "pgpool-II {found} is not supported: pgpool-sidecar needs pgpool-II {}.{} or later",
        PgpoolVersion::OLDEST_SUPPORTED.major,
        PgpoolVersion::OLDEST_SUPPORTED.minor
    )]
    Unsupported { found: PgpoolVersion },
}

/// Longest piece of pgpool's output quoted in an error; the rest is cut.
const OUTPUT_QUOTED_MAX: usize = 200;

/// How long `pgpool --version` may take: it only prints, so this is generous.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What pgpool prints before the version: `PACKAGE version VERSION (CODENAME)`, PACKAGE being
/// `pgpool-II` (src/main/main.c `show_version`, the same from 4.3 to 4.7).
const PREFIX: &str = "pgpool-II version ";

/// The version in the output of `pgpool --version`, e.g. `pgpool-II version 4.6.1
/// (chirikoboshi)`. pgpool prints that line to stderr; the caller passes both streams, and any
/// other line (a locale warning, say) is skipped.
pub fn parse_version_output(output: &str) -> Result<PgpoolVersion, VersionError> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix(PREFIX))
        .find_map(|rest| rest.split_whitespace().next().and_then(parse_version))
        .ok_or_else(|| VersionError::Unrecognised {
            output: quoted(output),
        })
}

/// A version as configure.ac's AC_INIT spells it: `4.6.1`, or a pre-release such as
/// `4.6beta1`, `4.7RC1`, `4.8devel` (two numbers, then letters and digits).
pub fn parse_version(s: &str) -> Option<PgpoolVersion> {
    let numeric_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (numbers, suffix) = s.split_at(numeric_end);
    let pre_release = !suffix.is_empty();
    if pre_release
        && !(suffix.starts_with(|c: char| c.is_ascii_alphabetic())
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return None;
    }
    let parts: Vec<u32> = numbers
        .split('.')
        .map(|p| {
            // `str::parse` takes a leading `+`; only digits are a version number here.
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    match parts[..] {
        [major, minor] if pre_release => Some(PgpoolVersion::new(major, minor, 0)),
        [major, minor, patch] => Some(PgpoolVersion::new(major, minor, patch)),
        _ => None,
    }
}

/// `version` if the sidecar can render its configuration.
pub fn check_supported(version: PgpoolVersion) -> Result<PgpoolVersion, VersionError> {
    if version < PgpoolVersion::OLDEST_SUPPORTED {
        Err(VersionError::Unsupported { found: version })
    } else {
        Ok(version)
    }
}

fn quoted(output: &str) -> String {
    let text = output.trim();
    if text.len() <= OUTPUT_QUOTED_MAX {
        return text.to_string();
    }
    let mut end = OUTPUT_QUOTED_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Runs `pgpool --version` (through the reaper: the sidecar is PID 1) and returns a supported
/// version, or why there is none.
pub async fn detect(reaper: &Reaper, timeout: Duration) -> Result<PgpoolVersion, VersionError> {
    let out = reaper
        .output(Command::new("pgpool").arg("--version"), timeout)
        .await
        .map_err(|e| VersionError::NotRun(e.to_string()))?;
    let both = format!("{}\n{}", out.stderr, out.stdout);
    if out.code != 0 {
        return Err(VersionError::Failed {
            code: out.code,
            output: quoted(&both),
        });
    }
    check_supported(parse_version_output(&both)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn v(major: u32, minor: u32, patch: u32) -> PgpoolVersion {
        PgpoolVersion::new(major, minor, patch)
    }

    #[test]
    fn parses_what_each_release_prints() {
        let cases: &[(&str, Option<PgpoolVersion>)] = &[
            (
                "pgpool-II version 4.3.5 (tamahomeboshi)\n",
                Some(v(4, 3, 5)),
            ),
            (
                "pgpool-II version 4.4.17 (nurikoboshi)\n",
                Some(v(4, 4, 17)),
            ),
            ("pgpool-II version 4.6.1 (chirikoboshi)\n", Some(v(4, 6, 1))),
            ("pgpool-II version 4.7.3 (tasukiboshi)\n", Some(v(4, 7, 3))),
            (
                "pgpool-II version 4.6beta1 (chirikoboshi)",
                Some(v(4, 6, 0)),
            ),
            ("pgpool-II version 4.7RC1 (tasukiboshi)", Some(v(4, 7, 0))),
            ("pgpool-II version 4.8devel (tasukiboshi)", Some(v(4, 8, 0))),
            ("pgpool-II version 5.0.0", Some(v(5, 0, 0))),
            // Another line first (a libc locale warning), and surrounding blanks.
            (
                "perl: warning: Setting locale failed.\n  pgpool-II version 4.6.1 (x)  \n",
                Some(v(4, 6, 1)),
            ),
            // Garbage.
            ("", None),
            ("\n\n", None),
            ("pgpool-II version", None),
            ("pgpool-II version \n4.6.1", None),
            ("pgpool-II version (chirikoboshi)", None),
            ("pgpool-II version 4 (x)", None),
            ("pgpool-II version 4.6 (x)", None),
            ("pgpool-II version 4.6.1.2 (x)", None),
            ("pgpool-II version 4..1 (x)", None),
            ("pgpool-II version .6.1 (x)", None),
            ("pgpool-II version 4.6. (x)", None),
            ("pgpool-II version +4.6.1 (x)", None),
            ("pgpool-II version 4.6.1-1 (x)", None),
            ("pgpool-II version 4.6.1beta (x)", Some(v(4, 6, 1))),
            ("pgpool-II version 4.x.1 (x)", None),
            ("pgpool-II version 99999999999.6.1 (x)", None),
            ("pgpool-II version ４.6.1 (x)", None),
            ("pgpool version 4.6.1", None),
            ("psql (PostgreSQL) 17.2", None),
            ("pgpool: invalid option -- '-'", None),
            ("PGPOOL-II VERSION 4.6.1", None),
        ];
        for (output, want) in cases {
            let got = parse_version_output(output).ok();
            assert_eq!(got, *want, "{output:?}");
        }
    }

    #[test]
    fn garbage_is_quoted_and_bounded_in_the_error() {
        let err = parse_version_output("no such thing\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`pgpool --version` printed no pgpool-II version: \"no such thing\""
        );
        let long = "é".repeat(OUTPUT_QUOTED_MAX);
        let err = parse_version_output(&long).unwrap_err().to_string();
        assert!(err.len() < OUTPUT_QUOTED_MAX + 80, "{err}");
        assert!(err.ends_with("…\""), "{err}");
    }

    #[test]
    fn versions_before_4_3_are_refused() {
        let cases = [
            (v(4, 2, 19), false),
            (v(3, 7, 0), false),
            (v(4, 3, 0), true),
            (v(4, 3, 5), true),
            (v(4, 6, 1), true),
            (v(4, 7, 3), true),
            (v(5, 0, 0), true),
        ];
        for (version, ok) in cases {
            assert_eq!(check_supported(version).is_ok(), ok, "{version}");
        }
        assert_eq!(
            check_supported(v(4, 2, 19)).unwrap_err().to_string(),
            "pgpool-II 4.2.19 is not supported: pgpool-sidecar needs pgpool-II 4.3 or later"
        );
    }

    #[test]
    fn compares_release_lines() {
        assert!(v(4, 4, 0).at_least(4, 4));
        assert!(v(4, 6, 1).at_least(4, 4));
        assert!(!v(4, 3, 20).at_least(4, 4));
        assert!(v(5, 0, 0).at_least(4, 7));
        assert!(!v(4, 7, 3).newer_than_known());
        assert!(v(4, 8, 0).newer_than_known());
        assert!(v(5, 0, 0).newer_than_known());
        assert_eq!(v(4, 6, 1).to_string(), "4.6.1");
    }
}
