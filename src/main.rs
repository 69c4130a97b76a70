//! The `kiln` command line: train, evaluate and use models from a terminal.
//!
//! Everything that knows about terminals, progress bars and plots lives in `cli`;
//! the library it drives knows nothing of them.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
