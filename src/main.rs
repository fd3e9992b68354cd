//! The `loopback-scaler` command line: a thin front end over the library.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    loopback_engine::allocator::tune();
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, naming the file or setting and the problem (see `loopback_core::Error`).
            eprintln!("error: {}", cli::one_line(&e));
            ExitCode::from(2)
        }
    }
}
