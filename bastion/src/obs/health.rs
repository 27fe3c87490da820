//! `health_listen`: liveness and readiness for load balancers and
//! orchestrators, and `/metrics` in the Prometheus text format, over plain
//! HTTP/1.1 (one request per connection).
//!
//! - `/livez`: the process is up and able to serve (its runtime answers, and
//!   the sandbox runtime directory exists). Busy, draining or an audit backlog
//!   do not make it fail: what watches it (an Auto Scaling group, systemd, a
//!   container HEALTHCHECK) replaces or restarts the bastion, which would kill
//!   live sessions and lose nothing else.
//! - `/readyz` (and `/healthz`, its older name): the bastion takes new
//!   sessions: for a load balancer's target health.
//!
//! Neither ever calls AWS: a load balancer's health checks must not cost IAM
//! calls, and an IAM outage must not take healthy bastions out of service
//! (the cache rides it out; see [`crate::keys::iam`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `bastion healthcheck`: asks our own `path` (`/livez` or `/readyz`) at `addr` (an
/// unspecified address means this host's loopback) and returns the status line and body
/// when it is `200`, or why not. Blocking, for a container's HEALTHCHECK.
pub fn probe(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut answer = Vec::new();
    s.take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("").trim().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(format!("{status}: {body}"))
    } else if status.is_empty() {
        Err(format!("{addr}: no answer"))
    } else {
        Err(format!("{addr}: {status}: {body}"))
    }
}

/// What the health endpoint asks of the server: a narrow view, so that this module knows
/// nothing of the monitor (and can be tested with a fake).
pub trait HealthView: Send + Sync {
    /// Why the process cannot serve at all, if it cannot (`/livez` 503): what only a restart
    /// or a new instance mends.
    fn not_live(&self) -> Option<String>;
    /// Why new sessions cannot be taken right now, if they cannot (`/readyz` 503).
    fn not_ready(&self) -> Option<String>;
    /// `/metrics`, in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// Serves `/livez`, `/readyz` (`/healthz`) and `/metrics` until the monitor exits.
pub async fn serve(listener: TcpListener, view: Arc<dyn HealthView>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &*view)).await;
        });
    }
}

/// One request on `stream`: reads its request line, writes the answer, closes.
async fn answer<S>(mut stream: S, view: &dyn HealthView) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // The request line is all we need; stop at its end or a full buffer.
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let verdict = |why: Option<String>| match why {
        None => ("200 OK", "ok\n".to_string(), "text/plain"),
        Some(why) => ("503 Service Unavailable", format!("{why}\n"), "text/plain"),
    };
    let (status, body, kind) = match (method, path) {
        ("GET" | "HEAD", "/readyz" | "/healthz") => verdict(view.not_ready()),
        ("GET" | "HEAD", "/livez") => verdict(view.not_live()),
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            view.metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".into(), "text/plain"),
        _ => ("405 Method Not Allowed", "GET only\n".into(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        live: Option<&'static str>,
        ready: Option<&'static str>,
    }

    impl HealthView for Fake {
        fn not_live(&self) -> Option<String> {
            self.live.map(String::from)
        }
        fn not_ready(&self) -> Option<String> {
            self.ready.map(String::from)
        }
        fn metrics(&self) -> String {
            "# TYPE x counter\nx 1\n".into()
        }
    }

    fn ask(view: &Fake, request: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(4096);
            client.write_all(request.as_bytes()).await.unwrap();
            answer(server, view).await.unwrap();
            let mut out = String::new();
            client.read_to_string(&mut out).await.unwrap();
            out
        })
    }

    #[test]
    fn liveness_and_readiness_answer_apart() {
        // Draining: not ready, still alive.
        let draining = Fake {
            live: None,
            ready: Some("draining"),
        };
        let r = ask(&draining, "GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.ends_with("\r\n\r\ndraining\n"),
            "{r}"
        );
        assert_eq!(ask(&draining, "GET /healthz HTTP/1.1\r\n\r\n"), r);
        let r = ask(&draining, "GET /livez HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        let dead = Fake {
            live: Some("the sandbox runtime directory is missing"),
            ready: Some("x"),
        };
        let r = ask(&dead, "GET /livez HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.contains("runtime directory"),
            "{r}"
        );
    }

    #[test]
    fn methods_paths_and_head() {
        let ok = Fake {
            live: None,
            ready: None,
        };
        let r = ask(&ok, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(
            r.contains("Content-Type: text/plain; version=0.0.4") && r.ends_with("x 1\n"),
            "{r}"
        );
        assert!(ask(&ok, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(&ok, "POST /livez HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        // HEAD: the length of the body, without the body.
        let r = ask(&ok, "HEAD /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        // A request line that never ends (a flood of bytes) is answered, not waited on forever.
        let r = ask(&ok, &"A".repeat(3000));
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    }
}
