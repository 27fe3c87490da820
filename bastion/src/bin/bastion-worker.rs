#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    bastion::server::worker::main()
}
