//! Captures the broker's log output in memory, so a test can check that something was logged.
//! One subscriber serves the whole test binary; tests tell their lines apart by peer address.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Buffer> = OnceLock::new();

/// Starts capturing (idempotent). Call before starting the broker.
pub fn capture() {
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    });
}

/// Everything logged so far.
pub fn text() -> String {
    LOGS.get()
        .and_then(|b| b.0.lock().ok().map(|v| String::from_utf8_lossy(&v).into_owned()))
        .unwrap_or_default()
}

/// Waits until a log line contains every one of `parts`.
pub async fn wait_for_line(parts: &[&str]) {
    let deadline = tokio::time::Instant::now() + super::WAIT;
    while !text().lines().any(|line| parts.iter().all(|p| line.contains(p))) {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for a log line with {parts:?}; logged:\n{}", text());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
