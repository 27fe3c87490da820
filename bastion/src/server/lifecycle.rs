//! Shutdown as a small state machine: signals in, [`Phase`]s out.
//!
//! ```text
//!            SIGTERM, drain_delay > 0          delay over              grace over
//! Running ─────────────────────────▶ Leaving ─────────────▶ Draining ─────────────▶ Closing
//!    │      SIGTERM, no drain_delay                 ▲          │ SIGINT                ▲
//!    ├──────────────────────────────────────────────┘          └───────────────────────┤
//!    │ SIGINT (also from Leaving)                                                       │
//!    └──────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! `Leaving` keeps accepting while `/readyz` answers 503, so the load balancer takes the
//! instance out first; `Draining` accepts nothing new and lets live sessions run until
//! `limits.shutdown_grace`; `Closing` ends every session. SIGINT means "now": it also skips
//! the audit sinks' exit flush (see [`Lifecycle::interrupted`]).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::monitor::Phase;

/// The signals the lifecycle reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: leave gracefully.
    Terminate,
    /// SIGINT: close everything now.
    Interrupt,
}

/// How long each phase lasts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `limits.drain_delay`: how long `Leaving` lasts (zero: no `Leaving`).
    pub drain_delay: Duration,
    /// `limits.shutdown_grace`: how long `Draining` lasts.
    pub grace: Duration,
}

/// Drives the phases from the signals.
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    timing: Timing,
    interrupted: bool,
}

impl Lifecycle {
    /// A lifecycle in `Running` that announces its phases on `phase`.
    pub fn new(phase: watch::Sender<Phase>, timing: Timing) -> Lifecycle {
        Lifecycle {
            phase,
            timing,
            interrupted: false,
        }
    }

    /// Runs until `Closing` has been announced. Without signals it never returns; a closed
    /// signal channel means no more signals will come.
    pub async fn run(&mut self, signals: &mut mpsc::Receiver<Signal>) {
        if next(signals).await == Signal::Terminate {
            self.terminate(signals).await;
        } else {
            self.interrupt("SIGINT: closing every session now");
        }
        self.announce(Phase::Closing);
    }

    /// Whether SIGINT cut the shutdown short (then nobody waits for the audit sinks).
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    async fn terminate(&mut self, signals: &mut mpsc::Receiver<Signal>) {
        let Timing { drain_delay, grace } = self.timing;
        if !drain_delay.is_zero() {
            tracing::info!(delay = %humantime::format_duration(drain_delay), "SIGTERM: /readyz now answers 503; still accepting connections until the load balancer has taken this instance out");
            self.announce(Phase::Leaving);
            if interrupt_within(signals, drain_delay).await {
                self.interrupt("SIGINT: closing every session now");
                return;
            }
        }
        tracing::info!(grace = %humantime::format_duration(grace), "SIGTERM: draining; live sessions may run until the grace period ends");
        self.announce(Phase::Draining);
        tokio::select! {
            interrupted = interrupt_within(signals, grace) => {
                if interrupted {
                    self.interrupt("SIGINT: closing the remaining sessions now");
                } else {
                    tracing::info!("grace period over; closing the remaining sessions");
                }
            }
            // Nobody is listening any more: the server has finished on its own.
            _ = self.phase.closed() => {}
        }
    }

    fn interrupt(&mut self, what: &str) {
        self.interrupted = true;
        tracing::info!("{what}");
    }

    fn announce(&self, phase: Phase) {
        // No receiver left only means nobody needs to hear it.
        let _ = self.phase.send(phase);
    }
}

/// The next signal; pending forever once the channel is closed.
async fn next(signals: &mut mpsc::Receiver<Signal>) -> Signal {
    match signals.recv().await {
        Some(s) => s,
        None => std::future::pending().await,
    }
}

/// Waits `period`; true if SIGINT came first (another SIGTERM changes nothing).
async fn interrupt_within(signals: &mut mpsc::Receiver<Signal>, period: Duration) -> bool {
    let deadline = tokio::time::sleep(period);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return false,
            s = next(signals) => if s == Signal::Interrupt { return true },
        }
    }
}

/// SIGTERM and SIGINT of this process as [`Signal`]s.
///
/// # Errors
///
/// The signal handlers cannot be installed.
pub fn os_signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
            };
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const SHORT: Duration = Duration::from_millis(150);

    /// Runs a lifecycle fed by `script` (signals, each after a pause) and returns the phases
    /// announced, each with when it came, and whether it was interrupted.
    async fn drive(
        timing: Timing,
        script: Vec<(Duration, Signal)>,
    ) -> (Vec<(Phase, Duration)>, bool) {
        let (phase_tx, mut phase_rx) = watch::channel(Phase::Running);
        let (sig_tx, mut sig_rx) = mpsc::channel(4);
        let started = Instant::now();
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while phase_rx.changed().await.is_ok() {
                let p = *phase_rx.borrow_and_update();
                seen.push((p, started.elapsed()));
                if p == Phase::Closing {
                    break;
                }
            }
            seen
        });
        tokio::spawn(async move {
            for (pause, s) in script {
                tokio::time::sleep(pause).await;
                let _ = sig_tx.send(s).await;
            }
            std::future::pending::<()>().await;
        });
        let mut lifecycle = Lifecycle::new(phase_tx, timing);
        lifecycle.run(&mut sig_rx).await;
        (seen.await.unwrap(), lifecycle.interrupted())
    }

    fn phases(seen: &[(Phase, Duration)]) -> Vec<Phase> {
        seen.iter().map(|(p, _)| *p).collect()
    }

    #[tokio::test]
    async fn sigterm_with_a_drain_delay_leaves_then_drains_then_closes() {
        let timing = Timing {
            drain_delay: SHORT,
            grace: SHORT * 2,
        };
        let (seen, interrupted) = drive(timing, vec![(Duration::ZERO, Signal::Terminate)]).await;
        assert_eq!(
            phases(&seen),
            [Phase::Leaving, Phase::Draining, Phase::Closing]
        );
        assert!(!interrupted);
        // Each phase lasts at least its configured time.
        assert!(seen[1].1 - seen[0].1 >= SHORT, "{seen:?}");
        assert!(seen[2].1 - seen[1].1 >= SHORT * 2, "{seen:?}");
    }

    #[tokio::test]
    async fn sigterm_without_a_drain_delay_drains_at_once() {
        let timing = Timing {
            drain_delay: Duration::ZERO,
            grace: SHORT,
        };
        let (seen, interrupted) = drive(timing, vec![(Duration::ZERO, Signal::Terminate)]).await;
        assert_eq!(phases(&seen), [Phase::Draining, Phase::Closing]);
        assert!(!interrupted);
    }

    #[tokio::test]
    async fn sigint_closes_at_once_from_any_phase() {
        let long = Timing {
            drain_delay: Duration::from_secs(60),
            grace: Duration::from_secs(60),
        };
        let (seen, interrupted) = drive(long, vec![(Duration::ZERO, Signal::Interrupt)]).await;
        assert_eq!(phases(&seen), [Phase::Closing]);
        assert!(interrupted);

        let script = vec![
            (Duration::ZERO, Signal::Terminate),
            (SHORT, Signal::Interrupt),
        ];
        let (seen, interrupted) = drive(long, script.clone()).await;
        assert_eq!(phases(&seen), [Phase::Leaving, Phase::Closing]);
        assert!(interrupted);
        assert!(seen[1].1 < Duration::from_secs(10), "{seen:?}");

        let no_delay = Timing {
            drain_delay: Duration::ZERO,
            ..long
        };
        let (seen, interrupted) = drive(no_delay, script).await;
        assert_eq!(phases(&seen), [Phase::Draining, Phase::Closing]);
        assert!(interrupted);
    }

    #[tokio::test]
    async fn a_second_sigterm_does_not_cut_the_grace_short() {
        let timing = Timing {
            drain_delay: Duration::ZERO,
            grace: SHORT * 3,
        };
        let script = vec![
            (Duration::ZERO, Signal::Terminate),
            (SHORT, Signal::Terminate),
        ];
        let (seen, interrupted) = drive(timing, script).await;
        assert_eq!(phases(&seen), [Phase::Draining, Phase::Closing]);
        assert!(seen[1].1 - seen[0].1 >= SHORT * 3, "{seen:?}");
        assert!(!interrupted);
    }
}
