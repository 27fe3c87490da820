//! `bastion check-config`: every problem of a configuration, or "valid".

use super::*;

pub(super) fn check_config(path: &Path) -> ExitCode {
    let cfg = match config::load(Some(path), std::env::vars(), Vec::new()) {
        Ok(c) => c,
        Err(errors) => return print_config_errors(&errors),
    };
    match prepare(&cfg, false) {
        Ok(_) => {
            println!(
                "{}: configuration is valid ({} listen address(es), {} host key(s), {} key source(s), {} forwarding rule(s))",
                path.display(),
                cfg.listen.len(),
                cfg.host_keys.len(),
                cfg.auth.len(),
                cfg.allow.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => print_config_errors(&errors),
    }
}
