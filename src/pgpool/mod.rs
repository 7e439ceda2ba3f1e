//! pgpool-II: its config files, its control interfaces, and its process.
pub mod conf;
pub mod control;
pub mod supervisor;
pub mod version;
