//! BPF programs, one file per hook family. Entry points are thin: they count the hit, read the
//! arguments and call a verb.
mod free;
mod malloc;
mod run;
