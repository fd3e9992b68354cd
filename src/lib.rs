//! Loopback Scaler, the app: the desktop window ([`gui`]) over the engine
//! (`loopback-engine`) and the core (`loopback-core`). The command line lives in the binary
//! (`src/main.rs`, `src/cli/`).

pub mod gui;
