//! candle's errors as the app's one-line [`Error`]s.

use loopback_core::Error;

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set.
pub(crate) fn candle_msg(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Converts a candle error into the library's error, with context.
pub(crate) fn engine_err(context: &str) -> impl FnOnce(candle_core::Error) -> Error + '_ {
    move |e| Error::Engine(format!("{context}: {}", candle_msg(&e)))
}
