#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    bastion::worker::main()
}
