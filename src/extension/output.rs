//! An extension's stdout and stderr, as lines in the broker's log (INFO and WARN) with the
//! extension id: what `print()` in Python or `println!` in Rust writes is not lost, and cannot
//! flood the log — each call may log at most a budget of lines, shared with the `log` interface.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longer lines are cut.
pub const MAX_LINE: usize = 4096;

/// How many more lines this call may log, and how many it could not.
#[derive(Debug, Default)]
pub struct Budget {
    left: AtomicU32,
    dropped: AtomicU32,
}

impl Budget {
    pub fn reset(&self, lines: u32) {
        self.left.store(lines, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    /// Takes one line from the budget; false (and counted) when it is spent.
    pub fn take(&self) -> bool {
        let took = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !took {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    pub fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One of the two streams of one instance. Clones share the unfinished line.
#[derive(Clone)]
pub struct LogOutput {
    id: Arc<str>,
    stream: Stream,
    budget: Arc<Budget>,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LogOutput {
    pub fn new(id: Arc<str>, stream: Stream, budget: Arc<Budget>) -> LogOutput {
        LogOutput {
            id,
            stream,
            budget,
            partial: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if b == b'\n' {
                self.emit(&partial);
                partial.clear();
            } else if partial.len() < MAX_LINE {
                partial.push(b);
            }
        }
    }

    fn emit(&self, line: &[u8]) {
        if !self.budget.take() {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        let id = &*self.id;
        match self.stream {
            Stream::Stdout => tracing::info!(extension = id, "stdout: {line}"),
            Stream::Stderr => tracing::warn!(extension = id, "stderr: {line}"),
        }
    }
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
