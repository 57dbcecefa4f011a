//! `incoming-bandwidth-throttling`: a token bucket around a connection's reader. A client over
//! its rate is read more slowly, never cut off: TCP flow control then slows the client down,
//! and nothing piles up in the broker.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Reads from `inner` at most `rate` bytes per second on average (0 = unlimited).
pub struct Throttled<R> {
    inner: R,
    bucket: Option<Bucket>,
}

struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// The largest burst: a tenth of a second's worth, so the rate holds over short spans too.
    capacity: f64,
    tokens: f64,
    last: Instant,
    /// Wait for at least this many bytes' worth of tokens (10 ms at the rate) rather than
    /// waking for every byte.
    min_grant: usize,
    sleep: Pin<Box<Sleep>>,
    /// Reads land here first, so no more than the granted bytes are taken from `inner`.
    scratch: Vec<u8>,
}

impl<R> Throttled<R> {
    pub fn new(inner: R, bytes_per_second: u64) -> Self {
        let bucket = (bytes_per_second > 0).then(|| {
            let rate = bytes_per_second as f64;
            let min_grant = (bytes_per_second / 100).clamp(1, 16 * 1024) as usize;
            let capacity = (rate / 10.0).max(min_grant as f64);
            Bucket {
                rate,
                capacity,
                tokens: 0.0,
                last: Instant::now(),
                min_grant,
                sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
                scratch: vec![0; capacity.ceil() as usize],
            }
        });
        Throttled { inner, bucket }
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttled<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(bucket) = this.bucket.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = bucket.min_grant.min(buf.remaining()) as f64;
        loop {
            let now = Instant::now();
            bucket.refill(now);
            if bucket.tokens >= want {
                break;
            }
            let wait = Duration::from_secs_f64((want - bucket.tokens) / bucket.rate);
            bucket.sleep.as_mut().reset(now + wait);
            ready!(bucket.sleep.as_mut().poll(cx));
        }
        let granted = (bucket.tokens as usize).min(buf.remaining()).min(bucket.scratch.len());
        let mut limited = ReadBuf::new(&mut bucket.scratch[..granted]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        bucket.tokens -= n as f64;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(rate: u64, len: usize) -> (Vec<u8>, Duration) {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let start = Instant::now();
        let mut reader = Throttled::new(&data[..], rate);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, data, "every byte arrives, in order");
        (out, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn reads_at_the_configured_rate() {
        let (_, took) = read_all(10_000, 50_000).await;
        // 5 s at 10 kB/s; the bucket starts empty.
        assert!(took >= Duration::from_millis(4_900), "{took:?}");
        assert!(took <= Duration::from_millis(5_200), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_rates_still_progress() {
        let (_, took) = read_all(3, 9).await;
        assert!(took >= Duration::from_millis(2_900), "{took:?}");
        assert!(took <= Duration::from_millis(3_500), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_unlimited() {
        let (_, took) = read_all(0, 1_000_000).await;
        assert_eq!(took, Duration::ZERO);
    }
}
