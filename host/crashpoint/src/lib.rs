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
//! Point names are `area.event` or `area.event:DETAIL` (for example `mill.saved:SETUP_PHASE`).

#[cfg(feature = "enabled")]
mod imp {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};

    struct Config {
        at: Option<(String, u32)>,
        trace: Option<Mutex<std::fs::File>>,
        hits: Mutex<HashMap<String, u32>>,
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
            Config {
                at,
                trace,
                hits: Mutex::new(HashMap::new()),
            }
        })
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
}
