//! The error a `leak` invocation ends with, and its exit code.
use std::io;

use crate::{trace::loader::LoaderError, trace::source::SourceError, trace::target::TargetError};

/// Exit code for bad input (usage, permissions, target, kernel, output path).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for failures while tracing.
pub const EXIT_FAILURE: u8 = 1;

/// Why `leak` stopped with an error. `Display` is a single line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user can fix this: wrong pid, not root, unsupported kernel, unwritable path...
    #[error("{0}")]
    BadInput(String),
    /// Finding the allocator failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Loading or attaching failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Reading the maps failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Anything else, with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Process exit code for this error.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadInput(_) | Self::Target(_) => EXIT_BAD_INPUT,
            Self::Loader(e) if is_permission(e) => EXIT_BAD_INPUT,
            _ => EXIT_FAILURE,
        }
    }

    /// The one-line message printed to the user.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::Loader(e) if is_permission(e) => {
                // Kernel 6.18 refuses uprobe perf events with CAP_PERFMON alone (measured in
                // tests/tests/deploy.rs).
                format!(
                    "{e}: leak needs root (or CAP_BPF, CAP_PERFMON and, for uprobes on some \
                     kernels, CAP_SYS_ADMIN): run it with sudo"
                )
            }
            _ => self.to_string(),
        }
        .replace('\n', " ")
    }

    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

fn is_permission(e: &LoaderError) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::PermissionDenied
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_single_line_messages() {
        let e = Error::BadInput("no such process: 7".into());
        assert_eq!(e.exit_code(), EXIT_BAD_INPUT);
        let e = Error::Target(TargetError::NoSuchProcess { pid: 7 });
        assert_eq!(e.exit_code(), EXIT_BAD_INPUT);
        assert_eq!(e.message(), "no such process: 7");
        let e = Error::io("writing x")(io::Error::other("disk\nfull"));
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        assert_eq!(e.message(), "writing x: disk full");
    }
}
