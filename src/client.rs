//! The CLI's side of the daemon's HTTP API: `healthcheck`, `recover`, `switchover`.
//!
//! Reads: the same configuration the daemon reads (listen port, API token), through the same
//! loader. Changes: nothing itself; it asks the local daemon, once per command, with a deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from the daemon on {addr} within {limit:?}")]
    NoAnswer { addr: SocketAddr, limit: Duration },
    #[error("cannot reach the daemon on {addr}: {message}")]
    Unreachable { addr: SocketAddr, message: String },
    #[error("the daemon's answer is not HTTP: {0:?}")]
    NotHttp(String),
    #[error("refused ({status}): {body}")]
    Refused { status: u16, body: String },
}

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Where the daemon of this container answers: its listen port on loopback (a wildcard listen
/// address is reachable there too).
pub fn daemon_addr(cfg: &Config) -> SocketAddr {
    match cfg.http_listen {
        a if a.ip().is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        a => a,
    }
}

/// Splits a raw HTTP/1.0 answer into status and body.
pub fn parse_answer(raw: &str) -> Result<Answer, ClientError> {
    let status = raw
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::NotHttp(raw.chars().take(80).collect()))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(Answer {
        status,
        body: body.trim().to_string(),
    })
}

/// One request to the daemon. One request line needs no HTTP client library.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    limit: Duration,
) -> Result<Answer, ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        // An answer is small; a bigger one is not ours.
        (&mut s).take(1 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let raw = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| ClientError::NoAnswer { addr, limit })?
        .map_err(|e| ClientError::Unreachable {
            addr,
            message: e.to_string(),
        })?;
    parse_answer(&raw)
}

/// `GET /readyz`: Ok when the daemon is ready.
pub async fn healthcheck(cfg: &Config) -> Result<(), ClientError> {
    let a = request(
        daemon_addr(cfg),
        "GET",
        "/readyz",
        None,
        Duration::from_secs(3),
    )
    .await?;
    match a.status {
        200 => Ok(()),
        status => Err(ClientError::Refused {
            status,
            body: a.body,
        }),
    }
}

/// A mutating call (`recover`, `switchover`) with the configured token; the daemon's answer.
pub async fn api_call(cfg: &Config, path: &str) -> Result<String, ClientError> {
    let token = cfg.api_token.as_ref().map(|t| t.expose());
    // A recovery or switchover takes as long as it takes; the daemon bounds its own steps.
    let a = request(
        daemon_addr(cfg),
        "POST",
        path,
        token,
        Duration::from_secs(3600),
    )
    .await?;
    match a.status {
        200 => Ok(a.body),
        status => Err(ClientError::Refused {
            status,
            body: a.body,
        }),
    }
}

/// The path of a recovery request for `node`.
pub fn recover_path(node: &str, rebuild: bool) -> String {
    format!(
        "/nodes/{}/recover{}",
        encode(node),
        if rebuild { "?rebuild=true" } else { "" }
    )
}

/// The path of a switchover request.
pub fn switchover_path(to: Option<&str>) -> String {
    match to {
        Some(t) => format!("/switchover?to={}", encode(t)),
        None => "/switchover".to_string(),
    }
}

/// Percent-encodes everything but unreserved characters: a node name from the command line
/// must not add path segments, query parameters or header lines.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_and_garbage_refused() {
        let a =
            parse_answer("HTTP/1.1 409 Conflict\r\ncontent-type: x\r\n\r\n{\"e\":1}\n").unwrap();
        assert_eq!(a.status, 409);
        assert_eq!(a.body, "{\"e\":1}");
        assert!(parse_answer("").is_err());
        assert!(parse_answer("SSH-2.0-OpenSSH").is_err());
    }

    #[test]
    fn node_names_cannot_inject_into_the_request() {
        assert_eq!(recover_path("pg-1", false), "/nodes/pg-1/recover");
        assert_eq!(
            recover_path("pg-1", true),
            "/nodes/pg-1/recover?rebuild=true"
        );
        assert_eq!(
            recover_path("x?rebuild=true\r\nX: y", false),
            "/nodes/x%3Frebuild%3Dtrue%0D%0AX%3A%20y/recover"
        );
        assert_eq!(switchover_path(Some("pg 2&x")), "/switchover?to=pg%202%26x");
        assert_eq!(switchover_path(None), "/switchover");
    }
}
