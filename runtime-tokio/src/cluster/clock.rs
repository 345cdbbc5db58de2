//! The engine's time for the cluster loops: nanoseconds since the loop's process
//! started, read from the monotonic clock.

use larder_engine::Instant;

/// Converts between the monotonic clock and the engine's [`Instant`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineClock {
    start: tokio::time::Instant,
}

impl EngineClock {
    pub(crate) fn new() -> Self {
        Self { start: tokio::time::Instant::now() }
    }

    /// Now, as the engine counts it.
    pub(crate) fn now(&self) -> Instant {
        let nanos = self.start.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The tokio instant for an engine deadline (far in the future for "never").
    pub(crate) fn deadline(&self, at: Option<Instant>) -> tokio::time::Instant {
        const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);
        match at {
            Some(at) if at != Instant::MAX => self.start + std::time::Duration::from_nanos(at.as_nanos()),
            _ => tokio::time::Instant::now() + FAR,
        }
    }
}
