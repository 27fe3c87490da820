#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    // A worker is this binary re-executed by the monitor: go straight to it,
    // before argument parsing or anything else runs.
    if std::env::args_os().nth(1).is_some_and(|a| a == "worker") {
        return bastion::server::worker::main();
    }
    bastion::cli::main()
}
