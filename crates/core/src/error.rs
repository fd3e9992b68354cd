//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the library; each message is one line that names the
/// file or setting concerned and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is outside its allowed range or otherwise invalid.
    #[error("invalid setting {field} = {value}: {reason}")]
    InvalidSetting {
        /// The setting's key, as in the settings file.
        field: String,
        /// The offending value, as the user wrote it.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// An input file could not be used.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file concerned.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An output file could not be written.
    #[error("{}: {reason}", path.display())]
    Output {
        /// The file concerned.
        path: PathBuf,
        /// Why it could not be written.
        reason: String,
    },
    /// Embedded metadata could not be parsed.
    #[error("metadata: {0}")]
    Metadata(String),
    /// The diffusion engine failed (a tensor operation, a device).
    #[error("engine: {0}")]
    Engine(String),
    /// A run would not fit the memory available (said before anything is loaded).
    #[error("not enough memory: {0}")]
    Memory(String),
    /// An image operation was given arguments it cannot work with.
    #[error("image operation: {0}")]
    ImageOp(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Input`] for `path`.
    pub fn input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Output`] for `path`.
    pub fn output(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Output {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::InvalidSetting`].
    pub fn setting(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidSetting {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
