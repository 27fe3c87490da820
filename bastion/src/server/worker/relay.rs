//! The bytes of one forward: pumped between the client's SSH channel and
//! the onward socket the monitor connected, counted both ways.

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use russh::server::{ChannelOpenHandle, Msg};
use russh::Channel;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes the relay moves per read, each way.
const RELAY_BUFFER: usize = 256 * 1024;

/// Pumps bytes between the client's channel and the onward socket until
/// both directions are closed. Returns (bytes from the target to the client,
/// bytes from the client to the target).
pub(super) async fn relay(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    target: OwnedFd,
) -> std::io::Result<(u64, u64)> {
    let tcp = std::net::TcpStream::from(target);
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(tcp)?;
    tcp.set_nodelay(true)?;
    reply.accept().await;
    let to_target = Arc::new(AtomicU64::new(0));
    let to_client = Arc::new(AtomicU64::new(0));
    let mut chan = Counted {
        inner: channel.into_stream(),
        read: to_target.clone(),
    };
    let mut tcp = Counted {
        inner: tcp,
        read: to_client.clone(),
    };
    let result =
        tokio::io::copy_bidirectional_with_sizes(&mut chan, &mut tcp, RELAY_BUFFER, RELAY_BUFFER)
            .await;
    let counts = (
        to_client.load(Ordering::Relaxed),
        to_target.load(Ordering::Relaxed),
    );
    result.map(|_| counts).or(Ok(counts))
}

/// A stream that counts the bytes read from it, even when the copy ends in an error.
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
