//! The plugin registry: the duchy's view of its plugin directory.
//!
//! * Components named `<protocol>-<version>.wasm` are loaded through the process-wide
//!   [`halo_engine::Runtime`] (compiled once, AOT-cached by digest); a file whose name does not
//!   match what the component says about itself is refused.
//! * A detached `<file>.sig` is checked against the trusted keys; with
//!   [`SignaturePolicy::Required`] unsigned components are refused, and a present but wrong
//!   signature (tampering) is always refused. The `.sig` is part of what a scan compares: a
//!   signature that arrives, changes or disappears re-evaluates its component. A component
//!   refused only for its signature while its bytes are the ones being offered (the `.sig` was
//!   removed under `Required`, or replaced by a wrong one) is withdrawn from new computations;
//!   like a removed `.wasm`, it stays loaded for the computations that already pinned it (they
//!   were admitted under the signature they had, and a computation never changes version).
//! * The directory is watched (debounced native events plus a periodic rescan for file
//!   systems without reliable events). One thread owns all loading; readers see an immutable
//!   [`Snapshot`] swapped in atomically (`ArcSwap`), so `select`/`pinned` never take a lock.
//! * New computations get the newest version of the protocol that serves their system
//!   protocol. A computation pins (id, version, digest) at creation and keeps it: versions
//!   whose file disappears stop being offered to new computations but stay loaded for the
//!   computations that pinned them (and are reloaded from the AOT cache after a restart).
//! * A broken or unsupported component is reported and never replaces a working one.
//! * Loading is long blocking work (compiling or deserialising a component, then calling its
//!   `describe`). It never runs on an async worker thread: the watcher has its own thread,
//!   [`PluginRegistry::open_async`] uses tokio's blocking pool, and the synchronous entry points
//!   that may load ([`PluginRegistry::open`], [`PluginRegistry::rescan`], and `pinned` when a
//!   pinned version must come back from the AOT cache) hand their worker's other tasks to
//!   another thread first ([`tokio::task::block_in_place`]) when called on a multi-threaded
//!   runtime. On a current-thread runtime they can only block it: use `open_async` there.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use halo_engine::{LoadedPlugin, Runtime};
use halo_protocol::{PluginPin, Protocol, ProtocolRegistry, SystemProtocol};
use halo_signing::{SignaturePolicy, SignatureStatus, TrustedKeys};
use sha2::{Digest, Sha256};

/// Registry settings.
#[derive(Clone)]
pub struct RegistryConfig {
    pub dir: PathBuf,
    pub policy: SignaturePolicy,
    pub trusted: TrustedKeys,
    /// Quiet period after the last file event before rescanning.
    pub debounce: Duration,
    /// Periodic rescan (covers file systems without reliable events).
    pub poll_interval: Duration,
    /// Which plugin id serves a system protocol when several are present.
    pub serve: HashMap<SystemProtocol, String>,
}

impl RegistryConfig {
    pub fn new(dir: &Path) -> Self {
        RegistryConfig {
            dir: dir.to_path_buf(),
            policy: SignaturePolicy::Optional,
            trusted: TrustedKeys::default(),
            debounce: Duration::from_millis(200),
            poll_interval: Duration::from_secs(5),
            serve: HashMap::new(),
        }
    }
}

/// One file of the plugin directory as last seen.
#[derive(Clone, Debug)]
pub struct FileStatus {
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// Hex SHA-256 of the bytes.
    pub digest: String,
    /// `Ok(pin)` when loaded, `Err(reason)` when refused.
    pub outcome: Result<PluginPin, String>,
    /// The version this path offers: the loaded one, or — when a new file was refused — the
    /// version it held before (a broken file never replaces a working one).
    pub serving: Option<PluginPin>,
    pub signature: Option<SignatureStatus>,
    /// The `.sig` file as read at the scan that produced this status.
    pub signature_file: SignatureFile,
}

/// A component's detached `.sig` file as one scan read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureFile {
    Absent,
    /// Present, with the hex SHA-256 of its bytes.
    Present {
        sha256: String,
        bytes: Vec<u8>,
    },
    /// Present but unreadable (the reason).
    Unreadable(String),
}

impl SignatureFile {
    fn read(sig_path: &Path) -> SignatureFile {
        match std::fs::read(sig_path) {
            Ok(bytes) => SignatureFile::Present {
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SignatureFile::Absent,
            Err(e) => SignatureFile::Unreadable(e.to_string()),
        }
    }
}

/// What readers see; replaced as a whole on every change.
#[derive(Default)]
pub struct Snapshot {
    /// Versions offered to new computations: id → version → plugin.
    pub available: BTreeMap<String, BTreeMap<semver::Version, Arc<LoadedPlugin>>>,
    /// Every version loaded by this process, by digest (pinned computations resolve here).
    pub by_digest: HashMap<String, Arc<LoadedPlugin>>,
    /// Per file in the directory.
    pub files: BTreeMap<PathBuf, FileStatus>,
}

/// A loaded version as listed by `halo plugin list` and the logs.
#[derive(Clone, Debug)]
pub struct PluginListing {
    pub id: String,
    pub version: String,
    pub digest: String,
    pub wit_package: String,
    pub system_protocol: SystemProtocol,
    /// Offered to new computations (its file is present).
    pub offered: bool,
    pub file: Option<PathBuf>,
}

pub struct PluginRegistry {
    runtime: Runtime,
    config: RegistryConfig,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises scans (the watcher thread and explicit `rescan` calls).
    scan_lock: Mutex<()>,
}

/// What one scan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub loaded: Vec<String>,
    pub withdrawn: Vec<String>,
    pub refused: Vec<(PathBuf, String)>,
}

fn parse_file_name(path: &Path) -> Option<(String, semver::Version)> {
    halo_signing::parse_component_file_name(path.file_name()?.to_str()?)
}

/// Runs `f`, long blocking work, without holding up an async worker: on a tokio multi-thread
/// runtime the calling worker first hands its other tasks to another thread
/// ([`tokio::task::block_in_place`]); outside a runtime, on a blocking-pool thread or on a
/// current-thread runtime (where nothing can take over) `f` just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl PluginRegistry {
    /// Opens the registry and loads what the directory holds now.
    ///
    /// **Blocking**: compiles (or deserialises from the AOT cache) every component and calls
    /// its `describe`, which can take seconds. Async code should call
    /// [`PluginRegistry::open_async`]; called from a multi-threaded runtime this still keeps
    /// the worker's other tasks running (see [`tokio::task::block_in_place`]).
    pub fn open(runtime: Runtime, config: RegistryConfig) -> Result<Arc<PluginRegistry>> {
        blocking(|| Self::open_now(runtime, config))
    }

    /// [`PluginRegistry::open`] on tokio's blocking pool: the async caller only awaits.
    pub async fn open_async(
        runtime: Runtime,
        config: RegistryConfig,
    ) -> Result<Arc<PluginRegistry>> {
        tokio::task::spawn_blocking(move || Self::open_now(runtime, config))
            .await
            .context("the plugin registry's loading thread failed")?
    }

    fn open_now(runtime: Runtime, config: RegistryConfig) -> Result<Arc<PluginRegistry>> {
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating plugin directory {}", config.dir.display()))?;
        let reg = Arc::new(PluginRegistry {
            runtime,
            config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            scan_lock: Mutex::new(()),
        });
        reg.rescan_now();
        Ok(reg)
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Re-reads the directory: loads new and changed files, withdraws removed ones.
    ///
    /// **Blocking** (loads components, like [`PluginRegistry::open`]); async code should call
    /// [`PluginRegistry::rescan_async`].
    pub fn rescan(&self) -> ScanReport {
        blocking(|| self.rescan_now())
    }

    /// [`PluginRegistry::rescan`] on tokio's blocking pool.
    pub async fn rescan_async(self: &Arc<Self>) -> Result<ScanReport> {
        let reg = self.clone();
        tokio::task::spawn_blocking(move || reg.rescan_now())
            .await
            .context("the plugin registry's loading thread failed")
    }

    fn rescan_now(&self) -> ScanReport {
        let _guard = match self.scan_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let old = self.snapshot.load_full();
        let mut report = ScanReport::default();
        let mut files: BTreeMap<PathBuf, FileStatus> = BTreeMap::new();
        let mut by_digest = old.by_digest.clone();
        let mut available: BTreeMap<String, BTreeMap<semver::Version, Arc<LoadedPlugin>>> =
            BTreeMap::new();

        let entries = match std::fs::read_dir(&self.config.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), "cannot read plugin directory: {e}");
                return report;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let modified = meta.modified().ok();
            let signature_file = SignatureFile::read(&halo_signing::signature_path(&path));
            // Unchanged since the last scan (size, mtime, the `.sig`'s bytes): keep the result.
            if let Some(prev) = old.files.get(&path)
                && prev.size == meta.len()
                && prev.modified == modified
                && prev.signature_file == signature_file
            {
                let prev = prev.clone();
                if let Some(pin) = &prev.serving
                    && let Some(p) = by_digest.get(&pin.digest)
                {
                    offer(&mut available, p.clone());
                }
                files.insert(path, prev);
                continue;
            }
            let status =
                self.load_file(&path, meta.len(), modified, signature_file, &mut by_digest);
            match &status.outcome {
                Ok(pin) => {
                    if let Some(p) = by_digest.get(&pin.digest) {
                        offer(&mut available, p.clone());
                    }
                    report.loaded.push(pin.to_string());
                    tracing::info!(plugin = %pin.name, version = %pin.version, digest = %pin.digest, file = %path.display(), "plugin loaded");
                }
                Err(reason) => {
                    report.refused.push((path.clone(), reason.clone()));
                    tracing::error!(file = %path.display(), "plugin refused: {reason}");
                    // A broken file never replaces a working one: keep offering what this
                    // path held before. Unless the bytes are those very ones: then what
                    // changed is the signature, and the version is refused as it stands.
                    if let Some(prev) = old.files.get(&path)
                        && let Some(pin) = &prev.serving
                        && pin.digest != status.digest
                        && let Some(p) = by_digest.get(&pin.digest)
                    {
                        offer(&mut available, p.clone());
                        files.insert(
                            path.clone(),
                            FileStatus {
                                serving: Some(pin.clone()),
                                ..status
                            },
                        );
                        continue;
                    }
                }
            }
            files.insert(path, status);
        }
        for (id, versions) in &old.available {
            for (v, p) in versions {
                let still = available.get(id).is_some_and(|m| m.contains_key(v));
                if !still {
                    report.withdrawn.push(p.pin().to_string());
                    tracing::info!(plugin = %id, version = %v, "plugin withdrawn from new computations (kept loaded for pinned ones)");
                }
            }
        }
        self.snapshot.store(Arc::new(Snapshot {
            available,
            by_digest,
            files,
        }));
        report
    }

    fn load_file(
        &self,
        path: &Path,
        size: u64,
        modified: Option<SystemTime>,
        signature_file: SignatureFile,
        by_digest: &mut HashMap<String, Arc<LoadedPlugin>>,
    ) -> FileStatus {
        let mut status = FileStatus {
            path: path.to_path_buf(),
            size,
            modified,
            digest: String::new(),
            outcome: Err(String::new()),
            serving: None,
            signature: None,
            signature_file: signature_file.clone(),
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                status.outcome = Err(format!("cannot read: {e}"));
                return status;
            }
        };
        status.digest = hex::encode(Sha256::digest(&bytes));
        let sig_path = halo_signing::signature_path(path);
        let signature = match &signature_file {
            SignatureFile::Absent => None,
            SignatureFile::Present { bytes, .. } => {
                match std::str::from_utf8(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|t| halo_signing::Signature::from_toml(t).map_err(|e| e.to_string()))
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        status.outcome =
                            Err(format!("malformed signature {}: {e}", sig_path.display()));
                        return status;
                    }
                }
            }
            SignatureFile::Unreadable(e) => {
                status.outcome = Err(format!("cannot read signature {}: {e}", sig_path.display()));
                return status;
            }
        };
        let sig = halo_signing::check(&bytes, signature.as_ref(), &self.config.trusted);
        status.signature = Some(sig.clone());
        if let Err(e) = halo_signing::enforce(path, &sig, self.config.policy, &self.config.trusted)
        {
            status.outcome = Err(e.to_string());
            return status;
        }
        let plugin = match by_digest.get(&status.digest) {
            Some(p) => p.clone(),
            None => match self.runtime.load(&bytes) {
                Ok(p) => p,
                Err(e) => {
                    status.outcome = Err(e.to_string());
                    return status;
                }
            },
        };
        let info = plugin.info();
        if let Some((id, version)) = parse_file_name(path)
            && (id != info.id || version.to_string() != info.version)
        {
            status.outcome = Err(format!(
                "file name says {id}-{version} but the component is {}-{}",
                info.id, info.version
            ));
            return status;
        } else if parse_file_name(path).is_none() {
            status.outcome = Err("file name must be <protocol>-<semver>.wasm".into());
            return status;
        }
        if semver::Version::parse(&info.version).is_err() {
            status.outcome = Err(format!("version {:?} is not semver", info.version));
            return status;
        }
        by_digest.insert(status.digest.clone(), plugin.clone());
        status.outcome = Ok(plugin.pin());
        status.serving = Some(plugin.pin());
        status
    }

    /// Every loaded version, offered or only kept for pinned computations.
    pub fn list(&self) -> Vec<PluginListing> {
        let snap = self.snapshot();
        let mut out: Vec<PluginListing> = snap
            .by_digest
            .values()
            .map(|p| {
                let info = p.info();
                let file = snap
                    .files
                    .values()
                    .find(|f| {
                        f.serving
                            .as_ref()
                            .is_some_and(|pin| pin.digest == info.digest)
                    })
                    .map(|f| f.path.clone());
                let offered = semver::Version::parse(&info.version).ok().is_some_and(|v| {
                    snap.available
                        .get(&info.id)
                        .and_then(|m| m.get(&v))
                        .is_some_and(|q| q.info().digest == info.digest)
                });
                PluginListing {
                    id: info.id.clone(),
                    version: info.version.clone(),
                    digest: info.digest.clone(),
                    wit_package: info.wit_package.clone(),
                    system_protocol: info.system_protocol,
                    offered,
                    file,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.id, &a.version).cmp(&(&b.id, &b.version)));
        out
    }

    /// Files refused at the last scan, with the reason.
    pub fn refused(&self) -> Vec<(PathBuf, String)> {
        self.snapshot()
            .files
            .values()
            .filter_map(|f| {
                f.outcome
                    .as_ref()
                    .err()
                    .map(|e| (f.path.clone(), e.clone()))
            })
            .collect()
    }

    /// Watches the directory on a dedicated thread until the handle is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle> {
        use notify::Watcher;
        let (tx, rx) = mpsc::channel::<()>();
        let events = tx.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = events.send(());
            }
        })
        .context("starting the plugin directory watcher")?;
        watcher
            .watch(&self.config.dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", self.config.dir.display()))?;
        let reg = Arc::downgrade(self);
        let debounce = self.config.debounce;
        let poll = self.config.poll_interval;
        let thread = std::thread::Builder::new()
            .name("plugin-watcher".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(poll) {
                        Ok(()) => {
                            // Debounce: wait for a quiet period.
                            loop {
                                match rx.recv_timeout(debounce) {
                                    Ok(()) => continue,
                                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                                }
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(reg) = reg.upgrade() else { return };
                    reg.rescan_now();
                }
            })
            .context("spawning the plugin watcher thread")?;
        Ok(WatchHandle {
            _watcher: watcher,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

fn offer(
    available: &mut BTreeMap<String, BTreeMap<semver::Version, Arc<LoadedPlugin>>>,
    p: Arc<LoadedPlugin>,
) {
    let info = p.info();
    if let Ok(v) = semver::Version::parse(&info.version) {
        available.entry(info.id.clone()).or_default().insert(v, p);
    }
}

/// Stops the watcher when dropped.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        // Dropping the watcher and our sender disconnects the channel; the thread exits.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t;
        }
    }
}

impl ProtocolRegistry for PluginRegistry {
    fn select(&self, protocol: SystemProtocol) -> Option<Arc<dyn Protocol>> {
        let snap = self.snapshot.load();
        let preferred = self.config.serve.get(&protocol);
        let mut best: Option<&Arc<LoadedPlugin>> = None;
        for (id, versions) in &snap.available {
            if preferred.is_some_and(|p| p != id) {
                continue;
            }
            if let Some((_, p)) = versions
                .iter()
                .rev()
                .find(|(_, p)| p.info().system_protocol == protocol)
            {
                // Several ids serving one protocol without a preference: the first id wins.
                if best.is_none() {
                    best = Some(p);
                }
            }
        }
        best.map(|p| p.clone() as Arc<dyn Protocol>)
    }

    fn pinned(&self, pin: &PluginPin) -> Option<Arc<dyn Protocol>> {
        if let Some(p) = self.snapshot.load().by_digest.get(&pin.digest) {
            return Some(p.clone() as Arc<dyn Protocol>);
        }
        // Not loaded in this process (e.g. its file was removed before a restart): the AOT
        // cache still has it. Deserialising and `describe` block; this is a synchronous trait
        // method called from async code, so keep the worker's other tasks running meanwhile.
        match blocking(|| self.runtime.load_cached(&pin.digest)) {
            Ok(Some(p)) if p.pin() == *pin => {
                let p2 = p.clone();
                self.snapshot.rcu(|s| {
                    let mut by_digest = s.by_digest.clone();
                    by_digest.insert(pin.digest.clone(), p2.clone());
                    Snapshot {
                        available: s.available.clone(),
                        by_digest,
                        files: s.files.clone(),
                    }
                });
                Some(p as Arc<dyn Protocol>)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!(plugin = %pin, "pinned plugin cannot be reloaded from the cache: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn blocking_work_hands_the_only_worker_over() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // On the only worker: announces itself, then blocks until the sender task runs.
            let waiter = tokio::spawn(async move {
                blocking(move || {
                    let _ = started_tx.send(());
                    rx.recv_timeout(Duration::from_secs(120))
                })
            });
            started_rx.await.unwrap();
            // Queued behind the blocked waiter: runs only if the worker was handed over.
            let sender = tokio::spawn(async move { tx.send(()).unwrap() });
            assert!(
                waiter.await.unwrap().is_ok(),
                "the sender never ran: blocking work held the only worker"
            );
            sender.await.unwrap();
        });
    }

    #[test]
    fn blocking_work_runs_where_no_worker_can_take_over() {
        // No runtime, a current-thread runtime, a blocking-pool thread: it just runs.
        assert_eq!(blocking(|| 1), 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { blocking(|| 2) }), 2);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let v = rt.block_on(async {
            tokio::task::spawn_blocking(|| blocking(|| 3))
                .await
                .unwrap()
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name(Path::new("/x/hmss-1.1.0.wasm")),
            Some(("hmss".into(), semver::Version::new(1, 1, 0)))
        );
        assert_eq!(
            parse_file_name(Path::new("ro-llv2-2.0.0-rc.1.wasm")),
            Some((
                "ro-llv2".into(),
                semver::Version::parse("2.0.0-rc.1").unwrap()
            ))
        );
        assert_eq!(parse_file_name(Path::new("hmss.wasm")), None);
        assert_eq!(parse_file_name(Path::new("hmss-x.wasm")), None);
    }
}
