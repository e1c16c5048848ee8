//! The `itsur` binary: a shell around [`itsur::cli::main`], which picks the role.

fn main() -> std::process::ExitCode {
    itsur::cli::main()
}
