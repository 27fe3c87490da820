//! `bastion healthcheck`: this bastion's own `/livez` (or `/readyz`), for a container HEALTHCHECK.

use super::*;

pub(super) fn healthcheck(config: Option<&Path>, ready: bool) -> ExitCode {
    // Only `health_listen` matters here: the rest was checked when serve started.
    let listen = match config::load(config, std::env::vars(), Vec::new()) {
        Ok(c) => c.health_listen,
        Err(errors) => {
            for e in &errors {
                print_error(&e.to_string(), e.hint.as_deref());
            }
            return ExitCode::from(1);
        }
    };
    let Some(addr) = listen else {
        print_error(
            "no health_listen to ask",
            Some("set health_listen (BASTION_HEALTH_LISTEN=0.0.0.0:8080) for serve and healthcheck alike"),
        );
        return ExitCode::from(1);
    };
    let path = if ready { "/readyz" } else { "/livez" };
    match crate::obs::health::probe(addr, path, std::time::Duration::from_secs(3)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            print_error(&format!("unhealthy: {why}"), None);
            ExitCode::from(1)
        }
    }
}
