//! Telling a reloader when to look again at files that Kubernetes mounts: a ConfigMap or Secret
//! update swaps a `..data` symlink, which never touches the files' own inodes, so the directories
//! are watched, not the files. A periodic check backs the watcher up (it can miss events, or be
//! unavailable), and a burst of events (a swap is several) settles into one check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior};

/// The directory a file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fires when something in the watched directories may have changed, and every `poll`.
pub struct Trigger {
    events: mpsc::Receiver<()>,
    ticker: Interval,
    _watcher: Option<RecommendedWatcher>,
}

impl Trigger {
    /// Watches `dirs`; `relevant` filters events (a watcher error always counts). `what` names
    /// the files in log lines.
    pub fn new(
        dirs: &[PathBuf],
        poll: Duration,
        relevant: impl Fn(&notify::Event) -> bool + Send + 'static,
        what: &str,
    ) -> Self {
        let (tx, events) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Reading a file is no change to it, and the reloader's own reads would otherwise
            // trigger it again and again.
            let change = |e: &notify::Event| !matches!(e.kind, notify::EventKind::Access(_));
            if res.as_ref().map_or(true, |e| change(e) && relevant(e)) {
                // A full channel already means "check pending".
                let _ = tx.try_send(());
            }
        });
        let watcher = match watcher {
            Ok(mut w) => {
                for d in dirs {
                    if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot watch the {what} directory; relying on polling");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no file watcher for the {what}; relying on polling");
                None
            }
        };
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Trigger {
            events,
            ticker,
            _watcher: watcher,
        }
    }

    /// Waits for the next reason to check.
    pub async fn next(&mut self) {
        tokio::select! {
            Some(()) = self.events.recv() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while self.events.try_recv().is_ok() {}
            }
            _ = self.ticker.tick() => {}
        }
    }
}
