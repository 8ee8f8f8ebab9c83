//! Live rules: every trigger (file watcher, SIGHUP, `POST /admin/reload`, a slow poll) runs
//! the same path — read → hash → compile (all errors) → swap — and a failure changes nothing.
//!
//! The active rules sit in an `ArcSwap`: requests `load_full()` a snapshot and never block
//! on a reload; a reload never changes a request midway. Reloads are serialised by an async
//! mutex that only the control plane takes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::RuleSet;
use super::compile::{compile, hash_sources};
use super::load;
use crate::metrics;

/// What the last reload attempt did, for `GET /admin/rules`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub result: &'static str,
    pub trigger: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub errors: Vec<String>,
}

pub fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    Swapped { hash: String },
    Unchanged { hash: String },
}

pub struct Reloader {
    path: PathBuf,
    rules: Arc<ArcSwap<RuleSet>>,
    status: ArcSwap<ReloadStatus>,
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, rules: Arc<ArcSwap<RuleSet>>) -> Self {
        Reloader {
            path,
            rules,
            status: ArcSwap::from_pointee(ReloadStatus {
                result: "ok",
                trigger: "start",
                at: SystemTime::now(),
                errors: Vec::new(),
            }),
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn status(&self) -> Arc<ReloadStatus> {
        self.status.load_full()
    }

    /// Read, compile and swap. On error the running rules stay; the errors are returned,
    /// logged, counted and shown by `/admin/rules`.
    pub async fn reload(&self, trigger: &'static str) -> Result<Reloaded, Vec<String>> {
        self.attempt(trigger, true).await
    }

    /// One try; errors are recorded (status, metric, log) only when `record` is set.
    async fn attempt(&self, trigger: &'static str, record: bool) -> Result<Reloaded, Vec<String>> {
        let _serial = self.serial.lock().await;
        let path = self.path.clone();
        let current = self.rules.load_full();
        let attempt = tokio::task::spawn_blocking(move || {
            let files = load::read(&path)?;
            let hash = hash_sources(&files);
            if hash == current.hash {
                return Ok(None);
            }
            compile(&files, Some(&current)).map(Some)
        })
        .await;
        let result = match attempt {
            Ok(Ok(None)) => {
                return Ok(Reloaded::Unchanged {
                    hash: self.rules.load().hash.clone(),
                });
            }
            Ok(Ok(Some(rules))) => Ok(rules),
            Ok(Err(errors)) => Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>()),
            Err(e) => Err(vec![format!("reload task failed: {e}")]),
        };
        match result {
            Ok(rules) => {
                let hash = rules.hash.clone();
                let paused: Vec<&str> = rules
                    .tasks
                    .iter()
                    .filter(|t| t.paused())
                    .map(|t| &*t.name)
                    .collect();
                tracing::info!(trigger, %hash, tasks = rules.tasks.len(), ?paused, "rules reloaded");
                let old = self.rules.swap(Arc::new(rules));
                metrics::rules_swapped(&old.hash, &hash);
                self.status.store(Arc::new(ReloadStatus {
                    result: "ok",
                    trigger,
                    at: SystemTime::now(),
                    errors: Vec::new(),
                }));
                Ok(Reloaded::Swapped { hash })
            }
            Err(errors) if !record => Err(errors),
            Err(errors) => {
                for e in &errors {
                    tracing::error!(trigger, error = %e, "rules reload refused; the running rules stay");
                }
                metrics::rules_reload_failed();
                self.status.store(Arc::new(ReloadStatus {
                    result: "error",
                    trigger,
                    at: SystemTime::now(),
                    errors: errors.clone(),
                }));
                Err(errors)
            }
        }
    }

    /// A reload from the file watcher or the poll: a file caught mid-swap (briefly missing,
    /// half-written) is retried a few times before it counts as an error.
    async fn reload_settled(&self, trigger: &'static str) {
        for attempt in 1..=3 {
            let last = attempt == 3;
            if self.attempt(trigger, last).await.is_ok() || last {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What the watcher looks at: the rules directory, or a file's parent (watching the file
/// itself would see the first kubelet swap and then nothing: the inode it watched is gone),
/// and which events there are worth a reload.
struct Watched {
    dir: PathBuf,
    /// The rules file's name; `None` when the rules path is a directory.
    file: Option<OsString>,
}

impl Watched {
    fn new(path: &Path) -> Self {
        if path.is_dir() {
            return Watched {
                dir: path.to_path_buf(),
                file: None,
            };
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Watched {
            dir,
            file: path.file_name().map(ToOwned::to_owned),
        }
    }

    /// An event about the rules (the file, a rules file of the directory, or the kubelet's
    /// `..data` link that a ConfigMap update swaps) that can mean they changed. Events
    /// about other files are not: a log written next to the rules would otherwise trigger a
    /// reload with every line, and a refused file logs a line with every reload. An event
    /// without a path (the kernel's queue overflowed) might be anything.
    fn wants(&self, event: &notify::Event) -> bool {
        may_change(&event.kind)
            && (event.paths.is_empty() || event.paths.iter().any(|p| self.about_rules(p)))
    }

    fn about_rules(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return true;
        };
        if name == "..data" {
            return true;
        }
        match &self.file {
            Some(file) => name == file,
            None => name.to_str().is_some_and(load::is_rules_file),
        }
    }
}

/// Whether an event's kind can mean a change. Any can, even a Remove (the content hash
/// decides), except an open or a read: notify reports those too (inotify's `IN_OPEN`), and
/// every reload opens the file, so reacting to them made each reload trigger the next, ten
/// times a second for as long as triage ran.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Start the triggers: a debounced directory watcher, SIGHUP, and a slow poll.
pub fn spawn_triggers(reloader: Arc<Reloader>, poll: Duration) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watched = Watched::new(&reloader.path);
    let dir = watched.dir.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A full channel already means "look again".
        if event.is_ok_and(|e| watched.wants(&e)) {
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; relying on SIGHUP, the admin endpoint and the poll");
            None
        }
    };

    let r = reloader.clone();
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        while rx.recv().await.is_some() {
            // Debounce: a ConfigMap swap or an editor save is a burst of events.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            r.reload_settled("watch").await;
        }
    });

    let r = reloader.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = r.reload("sighup").await;
        }
    });

    if !poll.is_zero() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.tick().await;
            loop {
                tick.tick().await;
                reloader.reload_settled("poll").await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn opens_and_reads_are_not_changes_but_writes_renames_and_removes_are() {
        let quiet = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ];
        for kind in quiet {
            assert!(!may_change(&kind), "{kind:?}");
        }
        let changes = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::Any),
            EventKind::Remove(RemoveKind::Any),
            EventKind::Any,
            EventKind::Other,
        ];
        for kind in changes {
            assert!(may_change(&kind), "{kind:?}");
        }
    }

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths
            .iter()
            .fold(notify::Event::new(kind), |e, p| e.add_path(p.into()))
    }

    #[test]
    fn only_events_about_the_rules_are_wanted() {
        let modify = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, "version: 1\n").unwrap();
        let as_file = Watched::new(&file);
        assert_eq!(as_file.dir, dir.path());
        let at = |name: &str| dir.path().join(name).display().to_string();

        assert!(as_file.wants(&event(modify, &[&at("rules.yaml")])));
        // A kubelet swap renames ..data_tmp over ..data; an editor renames its temp file.
        assert!(as_file.wants(&event(renamed, &[&at("..data_tmp"), &at("..data")])));
        assert!(as_file.wants(&event(
            renamed,
            &[&at(".rules.yaml.swp"), &at("rules.yaml")]
        )));
        assert!(as_file.wants(&event(EventKind::Other, &[])));
        assert!(!as_file.wants(&event(modify, &[&at("triage.log")])));
        assert!(!as_file.wants(&event(modify, &[&at("other.yaml")])));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!as_file.wants(&event(opened, &[&at("rules.yaml")])));

        let as_dir = Watched::new(dir.path());
        assert_eq!(
            (as_dir.dir.as_path(), as_dir.file.as_ref()),
            (dir.path(), None)
        );
        assert!(as_dir.wants(&event(modify, &[&at("other.yaml")])));
        assert!(as_dir.wants(&event(renamed, &[&at("..data_tmp"), &at("..data")])));
        assert!(!as_dir.wants(&event(modify, &[&at("triage.log")])));
        assert!(!as_dir.wants(&event(modify, &[&at(".rules.yaml.swp")])));
    }
}
