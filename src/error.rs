//! The two kinds of failure the binary maps to exit codes.

/// A failure of a command: bad usage/configuration (exit 2) or a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad usage or configuration: one line that says what is wrong and how to mend it.
    #[error("{0}")]
    Usage(String),
    /// Something failed while running.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    /// A usage failure from anything printable.
    pub fn usage(msg: impl std::fmt::Display) -> Self {
        Failure::Usage(msg.to_string())
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}
