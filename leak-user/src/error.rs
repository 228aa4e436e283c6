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
                format!("{e}: {}", permission_hint(crate::trace::caps::privileges()))
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

/// What to do about a permission the kernel refused, true for the privileges leak has: to
/// root it does not say "run as root". Kernel 6.18 refuses uprobe perf events without
/// `CAP_SYS_ADMIN` (measured in the integration tests `deploy` and `bad_input`).
#[must_use]
pub fn permission_hint(have: crate::trace::caps::Privileges) -> String {
    use crate::trace::caps::{NEEDS, Privileges};
    match have {
        Privileges::SysAdmin => "the kernel refused it although leak has CAP_SYS_ADMIN: a \
                                 seccomp profile, kernel lockdown or a security module forbids \
                                 it here (in a container, run it privileged: \
                                 deploy/patches/privileged.yaml)"
            .to_owned(),
        Privileges::BpfPerfmon => "leak has CAP_BPF and CAP_PERFMON, and this kernel opens \
                                   uprobes only with CAP_SYS_ADMIN: add it, or run leak as root"
            .to_owned(),
        Privileges::None => format!("{NEEDS}: run it with sudo"),
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

    #[test]
    fn permission_hints_are_true_for_who_leak_runs_as() {
        use crate::trace::caps::Privileges;
        let root = permission_hint(Privileges::SysAdmin);
        assert!(!root.contains("root") || root.contains("although"), "{root}");
        assert!(!root.contains("sudo"), "{root}");
        let caps = permission_hint(Privileges::BpfPerfmon);
        assert!(caps.starts_with("leak has CAP_BPF and CAP_PERFMON, and this kernel opens uprobes only with CAP_SYS_ADMIN"), "{caps}");
        let none = permission_hint(Privileges::None);
        assert!(
            none.starts_with("leak needs root") && none.ends_with("run it with sudo"),
            "{none}"
        );
    }
}
