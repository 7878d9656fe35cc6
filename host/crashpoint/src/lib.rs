//! Kill points: named places in the Kingdom and the duchy where the crash-recovery harness
//! (`tests/killpoints`) can have a process SIGKILL itself, deterministically.
//!
//! Built without the `enabled` feature (every operator build), [`point`] compiles to nothing.
//! With it, two environment variables are read once per process:
//!
//! * `HALO_CRASH_AT=NAME` or `NAME@K`: the process sends itself SIGKILL the first (or `K`-th)
//!   time it reaches point `NAME`. No destructor runs, nothing is flushed: exactly what the
//!   kernel does to an evicted pod.
//! * `HALO_CRASH_TRACE=FILE`: every point reached is appended to `FILE` as `NAME@K` (one line
//!   per hit), so a harness can discover the points a run passes through (protocol-independent:
//!   stage names come from the plugin's stage table).
//!
//! * `HALO_PAUSE_AT=NAME[@K]:MILLIS`: [`pause_at`] / [`pause`] return `MILLIS` at the first (or
//!   `K`-th) hit of the pause point `NAME` (the caller sleeps, asynchronously), so a harness can
//!   act while the process is in the middle of something (for example send SIGTERM during a
//!   stage). With `HALO_PAUSE_MARKER=FILE`, `NAME@K` is written to `FILE` when the pause
//!   begins. Pause points count their hits separately from kill points.
//!
//! Point names are `area.event` or `area.event:DETAIL` (for example `mill.saved:SETUP_PHASE`).

#[cfg(feature = "enabled")]
mod imp {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    struct Config {
        at: Option<(String, u32)>,
        trace: Option<Mutex<std::fs::File>>,
        hits: Mutex<HashMap<String, u32>>,
        pause: Option<(String, u32, Duration)>,
        pause_marker: Option<std::path::PathBuf>,
        pause_hits: Mutex<HashMap<String, u32>>,
    }

    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let at = std::env::var("HALO_CRASH_AT")
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| parse_target(&s));
            let trace = std::env::var_os("HALO_CRASH_TRACE").and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
                    .map(Mutex::new)
            });
            let pause = std::env::var("HALO_PAUSE_AT")
                .ok()
                .and_then(|s| parse_pause(&s));
            Config {
                at,
                trace,
                hits: Mutex::new(HashMap::new()),
                pause,
                pause_marker: std::env::var_os("HALO_PAUSE_MARKER").map(Into::into),
                pause_hits: Mutex::new(HashMap::new()),
            }
        })
    }

    /// `NAME[@K]:MILLIS`; `None` if malformed.
    pub(crate) fn parse_pause(s: &str) -> Option<(String, u32, Duration)> {
        let (target, millis) = s.rsplit_once(':')?;
        let millis = millis.parse::<u64>().ok()?;
        let (name, k) = parse_target(target);
        Some((name, k, Duration::from_millis(millis)))
    }

    pub fn pause(name: &str) -> Option<Duration> {
        let c = config();
        let (target, at, millis) = c.pause.as_ref()?;
        if target != name {
            return None;
        }
        let k = {
            let mut hits = c.pause_hits.lock().ok()?;
            let k = hits.entry(name.to_string()).or_insert(0);
            *k += 1;
            *k
        };
        if k != *at {
            return None;
        }
        eprintln!("halo-crashpoint: pausing {millis:?} at {name}@{k}");
        if let Some(marker) = &c.pause_marker {
            let _ = std::fs::write(marker, format!("{name}@{k}\n"));
        }
        Some(*millis)
    }

    pub(crate) fn parse_target(s: &str) -> (String, u32) {
        match s.rsplit_once('@') {
            Some((name, k)) => match k.parse::<u32>() {
                Ok(k) if k >= 1 => (name.to_string(), k),
                _ => (s.to_string(), 1),
            },
            None => (s.to_string(), 1),
        }
    }

    pub fn hit(name: &str) {
        let c = config();
        if c.at.is_none() && c.trace.is_none() {
            return;
        }
        let k = {
            let Ok(mut hits) = c.hits.lock() else { return };
            let k = hits.entry(name.to_string()).or_insert(0);
            *k += 1;
            *k
        };
        if let Some(trace) = &c.trace
            && let Ok(mut f) = trace.lock()
        {
            let _ = writeln!(f, "{name}@{k}");
            let _ = f.flush();
        }
        if let Some((target, at)) = &c.at
            && target == name
            && *at == k
        {
            eprintln!("halo-crashpoint: SIGKILL at {name}@{k}");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            // SIGKILL cannot be caught; if delivery is somehow delayed, never go on.
            std::process::abort();
        }
    }
}

/// A kill point named `name` (see the crate docs).
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "enabled")]
    imp::hit(name);
    #[cfg(not(feature = "enabled"))]
    let _ = name;
}

/// A kill point named `prefix:detail`; the name is only formatted in enabled builds.
#[inline]
pub fn point_at(prefix: &str, detail: &str) {
    #[cfg(feature = "enabled")]
    imp::hit(&format!("{prefix}:{detail}"));
    #[cfg(not(feature = "enabled"))]
    let _ = (prefix, detail);
}

/// A pause point named `name`: how long the caller should sleep here (see the crate docs);
/// always `None` in builds without the `enabled` feature.
#[inline]
pub fn pause(name: &str) -> Option<std::time::Duration> {
    #[cfg(feature = "enabled")]
    return imp::pause(name);
    #[cfg(not(feature = "enabled"))]
    {
        let _ = name;
        None
    }
}

/// A pause point named `prefix:detail`; the name is only formatted in enabled builds.
#[inline]
pub fn pause_at(prefix: &str, detail: &str) -> Option<std::time::Duration> {
    #[cfg(feature = "enabled")]
    return imp::pause(&format!("{prefix}:{detail}"));
    #[cfg(not(feature = "enabled"))]
    {
        let _ = (prefix, detail);
        None
    }
}

/// True in builds that honour `HALO_CRASH_AT` (the harness refuses to run against others).
pub const ENABLED: bool = cfg!(feature = "enabled");

#[cfg(all(test, feature = "enabled"))]
mod tests {
    #[test]
    fn targets_parse_with_and_without_occurrence() {
        assert_eq!(
            super::imp::parse_target("mill.saved:SETUP_PHASE"),
            ("mill.saved:SETUP_PHASE".into(), 1)
        );
        assert_eq!(
            super::imp::parse_target("send.chunk@3"),
            ("send.chunk".into(), 3)
        );
        assert_eq!(super::imp::parse_target("a@0"), ("a@0".into(), 1));
    }

    #[test]
    fn pauses_parse_with_and_without_occurrence() {
        use std::time::Duration;
        assert_eq!(
            super::imp::parse_pause("mill.execute:SETUP_PHASE:1500"),
            Some((
                "mill.execute:SETUP_PHASE".into(),
                1,
                Duration::from_millis(1500)
            ))
        );
        assert_eq!(
            super::imp::parse_pause("mill.execute:SHUFFLE_PHASE@2:10"),
            Some((
                "mill.execute:SHUFFLE_PHASE".into(),
                2,
                Duration::from_millis(10)
            ))
        );
        assert_eq!(super::imp::parse_pause("mill.execute"), None);
        assert_eq!(super::imp::parse_pause("x:soon"), None);
    }
}
