//! The `worker` program.

fn main() -> std::process::ExitCode {
    worker::cli::main()
}
