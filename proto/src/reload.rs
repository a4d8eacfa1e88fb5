//! Files a process reads again without a restart (its TLS folder, its token keys): on
//! SIGHUP, and when one of them changes (its modification time or length, looked at every
//! so often; a Kubernetes secret volume's update is such a change).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Calls `reload` on SIGHUP and whenever one of `files` changes (looked at every
/// `every`); `what` names them in the log. A reload that fails is logged and whatever was
/// in force stays (the reload itself installs only what loaded whole).
pub fn watch(
    files: Vec<PathBuf>,
    every: Duration,
    what: &'static str,
    reload: impl Fn() -> Result<(), String> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: no SIGHUP; reloaded when they change only");
                None
            }
        };
        let stamps = |files: &[PathBuf]| -> Vec<Option<(SystemTime, u64)>> {
            files
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok()?;
                    Some((m.modified().ok()?, m.len()))
                })
                .collect()
        };
        let mut seen = stamps(&files);
        loop {
            let asked = match hup.as_mut() {
                Some(hup) => tokio::select! {
                    _ = hup.recv() => true,
                    _ = tokio::time::sleep(every) => false,
                },
                None => {
                    tokio::time::sleep(every).await;
                    false
                }
            };
            let now = stamps(&files);
            if !asked && now == seen {
                continue;
            }
            seen = now;
            match reload() {
                Ok(()) => tracing::info!("{what} reloaded"),
                Err(e) => tracing::warn!(error = %e, "{what} not reloaded; the old ones stay"),
            }
        }
    });
}
