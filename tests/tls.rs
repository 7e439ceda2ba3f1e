//! TLS on every leg, end to end: clients → pgpool (`sslmode=require` with the default config,
//! `verify-full` with a CA and certificate the test makes), pgpool → each node and each standby
//! → the primary (`pg_stat_ssl` on the primary), and what `/status` and the metrics say.
//!
//! The clients are `psql` inside a node container, talking to pgpool over the compose network
//! by its service name (the name the certificate is made for). The nodes must offer TLS, which
//! the node flavour of the image does; on the official-like images this test uses the default
//! node image instead.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tls_nodes() -> Nodes {
    let n = nodes();
    if n.image.contains("official") {
        NODES_17
    } else {
        n
    }
}

/// `psql` in `container` against pgpool, as the superuser, with the libpq options `opts`.
/// The password goes by environment (`-e NAME` takes the value from this process), not in an
/// argument list.
fn psql_to_pgpool(container: &str, opts: &str, sql: &str) -> (i32, String, String) {
    sh(Command::new("docker").env("PGPASSWORD", PASSWORD).args([
        "exec",
        "-e",
        "PGPASSWORD",
        container,
        "psql",
        "-X",
        "-At",
        &format!("host=pgpool port=5432 user=postgres dbname=postgres connect_timeout=5 {opts}"),
        "-c",
        sql,
    ]))
}

/// A session through pgpool that stays open, under an application_name to find it by.
async fn held_session(c: &Cluster, app: &str) -> tokio_postgres::Client {
    let cfg = format!(
        "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=postgres \
         application_name={app} connect_timeout=3",
        c.pgpool_port
    );
    let (client, conn) = tokio_postgres::connect(&cfg, tokio_postgres::NoTls)
        .await
        .expect("a session through pgpool");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // pgpool opens its backend connections when the first query comes.
    client.simple_query("SELECT 1").await.expect("query");
    client
}

async fn wait_streaming(c: &Cluster) {
    wait_for(
        "both standbys streaming",
        Duration::from_secs(120),
        || async {
            let p = c.node("pg-0").await?;
            let r = query(
                &p,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await
            .ok()?;
            (r[0][0].as_deref() == Some("2")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn every_leg_is_encrypted_with_the_default_config() {
    let c = Cluster::new("tls").with_nodes(tls_nodes()).up().await;
    wait_streaming(&c).await;
    let pg0 = c.container("pg-0");

    // (a) Client → pgpool: the self-signed certificate, `sslmode=require`.
    let (code, out, err) = psql_to_pgpool(&pg0, "sslmode=require", "\\conninfo");
    assert_eq!(code, 0, "sslmode=require through pgpool: {out}{err}");
    assert!(out.contains("TLSv1"), "psql did not report TLS: {out}");
    // The self-signed certificate is not from the CA the client trusts: verify-full must fail
    // (so the other test's success is the CA's doing).
    let dir = std::env::temp_dir().join(format!("pgpool-sidecar-tls-a-{}", std::process::id()));
    make_ca_and_cert(&dir);
    copy_ca(&pg0, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out, err) = psql_to_pgpool(
        &pg0,
        "sslmode=verify-full sslrootcert=/tmp/test-ca.crt",
        "SELECT 1",
    );
    assert_ne!(
        code, 0,
        "verify-full accepted a self-signed certificate: {out}"
    );
    assert!(
        err.contains("certificate verify failed"),
        "unexpected failure: {err}"
    );

    // (c) pgpool → primary, and standbys → primary, on the primary's pg_stat_ssl.
    let held = held_session(&c, "tls-test").await;
    let primary = c.node("pg-0").await.expect("primary reachable");
    let rows = query(
        &primary,
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = 'tls-test'",
    )
    .await
    .unwrap();
    assert_eq!(
        (rows[0][0].as_deref(), rows[0][1].as_deref()),
        (Some("1"), Some("0")),
        "pgpool's session on the primary (encrypted, plain)"
    );
    // Polled: right after the cluster is ready the sidecar may still re-point a standby to its
    // slot, and its stream is briefly gone.
    let streams = wait_for(
        "both standbys' streams",
        Duration::from_secs(60),
        || async {
            let rows = query(
                &primary,
                "SELECT r.application_name, s.ssl::text FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming' ORDER BY 1",
            )
            .await
            .ok()?;
            let streams: Vec<(String, String)> = rows
                .iter()
                .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
                .collect();
            (streams.len() == 2).then_some(streams)
        },
    )
    .await;
    assert_eq!(
        streams,
        [
            ("pg-1".to_string(), "true".to_string()),
            ("pg-2".to_string(), "true".to_string())
        ],
        "standbys' streams (application_name, ssl)"
    );

    // (d) /status and the metrics say the same.
    let status = wait_for(
        "/status shows every leg",
        Duration::from_secs(30),
        || async {
            let s = c.status().await;
            let tls = s.get("tls")?.clone();
            let enc = |node: &str| tls["pgpool_backend"][node]["encrypted"].as_u64();
            (tls["client"] == true
                && tls["replication"]["pg-1"] == true
                && tls["replication"]["pg-2"] == true
                && enc("pg-0").unwrap_or(0) >= 1)
                .then_some(tls)
        },
    )
    .await;
    assert_eq!(status["pgpool_backend"]["pg-0"]["plain"], 0, "{status}");
    let (_, m) = c.http("/metrics").await;
    let series = |s: &str| metric(&m, &format!("pgpool_sidecar_{s}"));
    assert_eq!(series("tls_enabled{leg=\"client\"}"), Some(1.0), "{m}");
    for node in ["1", "2"] {
        let enc = format!("tls_sessions{{encrypted=\"true\",leg=\"replication\",node=\"{node}\"}}");
        let plain =
            format!("tls_sessions{{encrypted=\"false\",leg=\"replication\",node=\"{node}\"}}");
        assert_eq!(series(&enc), Some(1.0), "{enc}");
        assert_eq!(series(&plain), Some(0.0), "{plain}");
    }
    let backend = series("tls_sessions{encrypted=\"true\",leg=\"pgpool_backend\",node=\"0\"}");
    assert!(backend.unwrap_or(0.0) >= 1.0, "{backend:?}");
    assert_eq!(
        series("tls_sessions{encrypted=\"false\",leg=\"pgpool_backend\",node=\"0\"}"),
        Some(0.0)
    );
    drop(held);

    // No key in the sidecar's answers.
    let (_, status_text) = c.http("/status").await;
    assert!(!status_text.contains("PRIVATE KEY"));
    assert!(!m.contains("PRIVATE KEY"));
    assert!(!c.logs("pgpool").contains("PRIVATE KEY"));
}

/// A CA and a server certificate for `pgpool` signed by it, in a fresh host directory.
fn make_ca_and_cert(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pgpool-sidecar test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["pgpool".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
}

/// The CA of `dir` to /tmp/test-ca.crt in `container`.
fn copy_ca(container: &str, dir: &std::path::Path) {
    let (code, out, err) = sh(Command::new("docker").args([
        "cp",
        dir.join("ca.crt").to_str().unwrap(),
        &format!("{container}:/tmp/test-ca.crt"),
    ]));
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn verify_full_works_with_the_operator_s_ca_and_certificate() {
    let dir = std::env::temp_dir().join(format!("pgpool-sidecar-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    make_ca_and_cert(&dir);
    let c = Cluster::new("tlsca")
        .with_nodes(tls_nodes())
        .env("PGPOOL_TLS_DIR", dir.to_str().unwrap())
        .env("TLS_CERT_FILE", "/etc/pgpool-sidecar/tls/server.crt")
        .env("TLS_KEY_FILE", "/etc/pgpool-sidecar/tls/server.key")
        .up()
        .await;
    let pg0 = c.container("pg-0");
    copy_ca(&pg0, &dir);
    let (code, out, err) = psql_to_pgpool(
        &pg0,
        "sslmode=verify-full sslrootcert=/tmp/test-ca.crt",
        "\\conninfo",
    );
    assert_eq!(code, 0, "verify-full with the test's CA: {out}{err}");
    assert!(out.contains("TLSv1"), "{out}");
    // The certificate is for `pgpool`: another name for the same server is refused.
    let (code, _, err) = sh(Command::new("docker").env("PGPASSWORD", PASSWORD).args([
        "exec",
        "-e",
        "PGPASSWORD",
        &pg0,
        "sh",
        "-c",
        "psql -X -At \"host=$(getent hosts pgpool | cut -d' ' -f1) user=postgres dbname=postgres \
         sslmode=verify-full sslrootcert=/tmp/test-ca.crt connect_timeout=5\" -c 'SELECT 1'",
    ]));
    assert_ne!(
        code, 0,
        "verify-full accepted a certificate for another name"
    );
    assert!(err.contains("does not match"), "{err}");
    let status = c.status().await;
    assert_eq!(status["tls"]["client"], true);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}
