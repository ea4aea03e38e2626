//! What a connection's bytes pass through: [`WriteTimeout`] closes a connection
//! whose writes make no progress, [`Body`] holds a request's `--web.max-requests`
//! slot until hyper has taken the last byte of the route's [`Payload`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// A stream whose writes fail with `TimedOut` once they made no progress for the
/// timeout: hyper (and rustls above it) then drop the connection, and with it the
/// answer it held. Reads pass through (hyper bounds them with the header timeout).
pub struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `Pending` from the inner stream: starts or checks the stall timer.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.timeout;
        let t = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for --web.write-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

/// What a route answers with: a body in one or more buffers, sent one after the
/// other without being copied together (a scrape: the poll's published exposition,
/// then the server's own families).
#[derive(Debug, Default)]
pub struct Payload(Vec<Bytes>);

impl Payload {
    pub fn new(pieces: impl IntoIterator<Item = Bytes>) -> Self {
        Payload(pieces.into_iter().collect())
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload(vec![b])
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload::from(Bytes::from(s))
    }
}

impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Self {
        Payload::from(Bytes::from_static(s.as_bytes()))
    }
}

/// A response body that holds its `--web.max-requests` slot until hyper has taken the
/// last byte. It hands the bytes out in `BODY_CHUNK` pieces (slices of the same
/// buffers, no copy): hyper takes a piece only when its write buffer has room, so a
/// client that does not read keeps its slot until the write timeout, instead of hyper
/// queueing the whole body at once and the slot going free at once.
pub struct Body {
    /// The buffers not yet started, in order.
    pieces: std::vec::IntoIter<Bytes>,
    rest: Bytes,
    _slot: Option<OwnedSemaphorePermit>,
    /// Marks the connection idle again (may be closed for a new one) once dropped.
    _busy: Option<super::reserve::IdleOnDrop>,
}

impl Body {
    /// `payload`, holding `slot` (if any) until its last byte is taken.
    pub(super) fn new(payload: Payload, slot: Option<OwnedSemaphorePermit>) -> Self {
        Body {
            pieces: payload.0.into_iter(),
            rest: Bytes::new(),
            _slot: slot,
            _busy: None,
        }
    }

    /// Keeps the connection busy until this body is dropped (its last byte taken).
    pub(super) fn hold(&mut self, busy: super::reserve::IdleOnDrop) {
        self._busy = Some(busy);
    }
}

/// Piece of a response body handed to hyper at a time.
const BODY_CHUNK: usize = 64 * 1024;

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        while this.rest.is_empty() {
            match this.pieces.next() {
                Some(p) => this.rest = p,
                None => return Poll::Ready(None),
            }
        }
        let n = this.rest.len().min(BODY_CHUNK);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.pieces.as_slice().iter().all(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        let left = self
            .pieces
            .as_slice()
            .iter()
            .map(|p| p.len() as u64)
            .sum::<u64>();
        SizeHint::with_exact(left.saturating_add(self.rest.len() as u64))
    }
}
