//! The parts of the `halo` binary that tests drive directly: the data-provider (`halo edp`)
//! and measurement-consumer (`halo mc`) simulators, and the result table they share with
//! `halo demo`.

pub mod edp;
pub mod lifecycle;
pub mod mc;
pub mod report;
pub mod settings;

/// Parses `ID=URL` (`--peer`, `--duchy`).
pub fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=URL, got {s:?}"))?;
    if id.is_empty() || url.is_empty() {
        return Err(format!("expected ID=URL, got {s:?}"));
    }
    Ok((id.to_string(), url.to_string()))
}
