//! The `kiln` command line: train, evaluate and use models from a terminal.
//!
//! Everything that knows about terminals, progress bars and plots lives in `cli`;
//! the library it drives knows nothing of them.

mod cli;

fn main() -> std::process::ExitCode {
    // On CPU adapters kiln compiles kernels in a helper process started from this
    // executable; in that process this serves and is done.
    if kiln::device::compile_helper_main() {
        return std::process::ExitCode::SUCCESS;
    }
    cli::main()
}
