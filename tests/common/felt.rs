//! What an application feels through pgpool: one session doing a statement every 50 ms, a new
//! session only after a failure, every attempt recorded; and the figures drawn from the record
//! (pure, unit-tested below): the write-unavailability window, the longest gap between
//! acknowledged statements, and how many times an established session was lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{query, Cluster};

/// One statement, from its start to its answer (or failure).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
    /// Ran on a session that had already answered before: its failure is a lost session.
    pub established: bool,
    /// The `acked` row this write committed (writes only).
    pub id: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Work {
    /// `INSERT INTO acked` on the primary.
    Write,
    /// A read that pgpool load-balances to a standby: a session counts as usable only once it
    /// answers from a standby, and an answer from the primary counts as a failure.
    StandbyRead,
}

/// The client, running until [`Felt::stop`].
pub struct Felt {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A write held longer than this fails (and the session is dropped): a longer hold shows in the
/// longest gap anyway.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const PACE: Duration = Duration::from_millis(50);

impl Felt {
    /// `first_id`: the first `acked` id this client writes (ids go up by one per write).
    pub fn start(port: u16, work: Work, first_id: i64) -> Self {
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (attempts, stop) = (attempts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut session: Option<(Client, bool)> = None;
                let mut id = first_id;
                while !stop.load(Ordering::SeqCst) {
                    let start = Instant::now();
                    let (result, established, wrote) = match session.take() {
                        Some((client, established)) => {
                            let (r, wrote) = statement(&client, work, &mut id).await;
                            if r.is_ok() {
                                session = Some((client, true));
                            }
                            (r, established, wrote)
                        }
                        None => match Cluster::connect_port(port).await {
                            Some(client) => {
                                let (r, wrote) = statement(&client, work, &mut id).await;
                                if r.is_ok() {
                                    session = Some((client, true));
                                }
                                (r, false, wrote)
                            }
                            None => (Err("cannot connect".to_string()), false, None),
                        },
                    };
                    attempts.lock().unwrap().push(Attempt {
                        start,
                        end: Instant::now(),
                        ok: result.is_ok(),
                        established,
                        id: wrote.filter(|_| result.is_ok()),
                        error: result.err(),
                    });
                    tokio::time::sleep(PACE.saturating_sub(start.elapsed())).await;
                }
            })
        };
        Felt {
            attempts,
            stop,
            task,
        }
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits until statements have succeeded without a failure for `steady`, after `since`.
    pub async fn wait_steady(&self, since: Instant, steady: Duration, limit: Duration) -> Instant {
        super::wait_for(
            "statements through pgpool to stay successful",
            limit,
            || async {
                let a = self.attempts();
                let first_ok = steady_from(&a, since, steady)?;
                Some(first_ok)
            },
        )
        .await
    }

    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let attempts = self.attempts.lock().unwrap().clone();
        attempts
    }
}

/// One statement of `work` on `client`; the `acked` id it wrote, if any.
async fn statement(client: &Client, work: Work, id: &mut i64) -> (Result<(), String>, Option<i64>) {
    match work {
        Work::Write => {
            *id += 1;
            let sql = format!("INSERT INTO acked (id) VALUES ({id})");
            let r = match tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(&sql)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("held over 10 s".into()),
            };
            (r, Some(*id))
        }
        Work::StandbyRead => {
            let sql = "SELECT current_setting('transaction_read_only')";
            let r = match tokio::time::timeout(STATEMENT_TIMEOUT, query(client, sql)).await {
                Ok(Ok(rows)) => match rows.first().and_then(|r| r.first()).cloned().flatten() {
                    Some(v) if v == "on" => Ok(()),
                    other => Err(format!("answered from the primary ({other:?})")),
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("held over 10 s".into()),
            };
            (r, None)
        }
    }
}

/// The first successful attempt started at or after `since` after which every attempt
/// succeeded for `steady` (and one attempt started after that span): its end.
pub fn steady_from(attempts: &[Attempt], since: Instant, steady: Duration) -> Option<Instant> {
    let later: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= since).collect();
    'candidates: for (i, a) in later.iter().enumerate() {
        if !a.ok {
            continue;
        }
        for b in &later[i + 1..] {
            if !b.ok {
                continue 'candidates;
            }
            if b.start >= a.end + steady {
                return Some(a.end);
            }
        }
        return None;
    }
    None
}

/// The figures of one fault, over the attempts between `fault` and `until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Fault → the first acknowledged statement after which statements stayed successful for
    /// 1.5 s, in seconds; `None` when that never happened before `until`.
    pub window: Option<f64>,
    /// Longest time between two consecutive acknowledgements, the last one before the fault
    /// included, in seconds: also counts statements held rather than failed.
    pub longest_gap: f64,
    /// Established sessions lost (a statement failed on a session that had answered).
    pub disconnects: usize,
    /// Runs of failed statements with no success between them.
    pub bursts: usize,
}

pub const STEADY: Duration = Duration::from_millis(1500);

pub fn figures(attempts: &[Attempt], fault: Instant, until: Instant) -> Figures {
    let window = steady_from(attempts, fault, STEADY)
        .filter(|t| *t <= until)
        .map(|t| (t - fault).as_secs_f64());
    let mut acks: Vec<Instant> = attempts.iter().filter(|a| a.ok).map(|a| a.end).collect();
    acks.sort();
    let before = acks.iter().rev().find(|t| **t <= fault).copied();
    let mut marks: Vec<Instant> = before.into_iter().collect();
    marks.extend(acks.iter().copied().filter(|t| *t > fault && *t <= until));
    let longest_gap = marks
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    let span: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.start >= fault && a.start <= until)
        .collect();
    let disconnects = span.iter().filter(|a| !a.ok && a.established).count();
    let bursts = span
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.ok && (*i == 0 || span[i - 1].ok))
        .count();
    Figures {
        window,
        longest_gap,
        disconnects,
        bursts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts every 50 ms from `t0`, each 10 ms long, from a pattern: `o` ok on an
    /// established session, `n` ok on a new one, `x` failed on an established session, `-`
    /// failed without one.
    fn record(t0: Instant, pattern: &str) -> Vec<Attempt> {
        pattern
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let start = t0 + Duration::from_millis(50 * i as u64);
                Attempt {
                    start,
                    end: start + Duration::from_millis(10),
                    ok: matches!(c, 'o' | 'n'),
                    established: matches!(c, 'o' | 'x'),
                    id: None,
                    error: None,
                }
            })
            .collect()
    }

    #[test]
    fn one_outage_is_one_disconnect_and_a_window_to_the_steady_ack() {
        let t0 = Instant::now();
        // 10 ok, fault at attempt 10, 5 failures, then ok for 2 s.
        let p = format!("{}x----n{}", "o".repeat(10), "o".repeat(40));
        let a = record(t0, &p);
        let fault = t0 + Duration::from_millis(500);
        let f = figures(&a, fault, t0 + Duration::from_secs(5));
        assert_eq!(f.disconnects, 1);
        assert_eq!(f.bursts, 1);
        // First good attempt is #15: starts 750 ms, ends 760 ms.
        assert!((f.window.unwrap() - 0.26).abs() < 1e-9, "{f:?}");
        // Last ack before: #9 ends 460 ms; next ack 760 ms.
        assert!((f.longest_gap - 0.30).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn a_lucky_write_between_failures_is_not_recovery() {
        let t0 = Instant::now();
        let p = format!(
            "{}x--n{}x-n{}",
            "o".repeat(10),
            "o".repeat(5),
            "o".repeat(40)
        );
        let a = record(t0, &p);
        let fault = t0 + Duration::from_millis(500);
        let f = figures(&a, fault, t0 + Duration::from_secs(5));
        assert_eq!(f.disconnects, 2);
        assert_eq!(f.bursts, 2);
        // The steady run starts at the second `n`, attempt 21: ends 1060 ms.
        assert!((f.window.unwrap() - 0.56).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn no_steady_span_before_the_end_is_no_window() {
        let t0 = Instant::now();
        let p = format!("{}x--n{}x", "o".repeat(10), "o".repeat(10));
        let a = record(t0, &p);
        let f = figures(
            &a,
            t0 + Duration::from_millis(500),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(f.window, None);
    }

    #[test]
    fn a_held_statement_shows_as_a_gap_without_a_failure() {
        let t0 = Instant::now();
        let mut a = record(t0, &"o".repeat(30));
        // Attempt 12 held for 3 s: everything after it shifts.
        for x in a.iter_mut().skip(12) {
            x.start += Duration::from_secs(3);
            x.end += Duration::from_secs(3);
        }
        a[12].start -= Duration::from_secs(3);
        let f = figures(
            &a,
            t0 + Duration::from_millis(500),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(f.disconnects, 0);
        assert!(f.longest_gap > 3.0, "{f:?}");
    }
}
