//! Log lines through the host's `log` import; the host attributes them to the plugin, its
//! version and the computation. Use the macros: `halo_plugin_sdk::info!("stage {n} done")`.

pub use crate::bindings::halo::mpc::log::Level;

/// Sends one log line to the host (stderr when not running as a wasm guest).
pub fn write(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::halo::mpc::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// `log!(Level::Info, "format {}", args)`: formats and sends a log line at `level`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log::write($level, &::std::format!($($arg)+))
    };
}

/// Logs at trace level (`format!` syntax).
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arg)+) };
}

/// Logs at debug level (`format!` syntax).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// Logs at info level (`format!` syntax).
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

/// Logs at warn level (`format!` syntax).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

/// Logs at error level (`format!` syntax).
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn macros_expand_natively() {
        crate::info!("a {} line", "test");
        crate::log!(super::Level::Warn, "n = {}", 3);
    }
}
