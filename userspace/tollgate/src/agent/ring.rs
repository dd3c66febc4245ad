//! Reading a datapath ring buffer: the one loop body both readers (rate-limit
//! offenders in `agent/mod.rs`, API samples in `agent/api.rs`) share. Tokio
//! wakes the reader when the ring is readable; it clears the readiness,
//! then drains, so a record written after the ring was found empty wakes
//! it again; a drain cut at its limit is followed by one that does not
//! wait, so nothing left behind waits for the next record to arrive.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// A ring buffer registered with the runtime.
pub struct Reader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// The last drain stopped at its limit: the ring may hold records no
    /// wake-up will announce.
    backlog: bool,
}

impl Reader {
    /// Watches `ring`; `what` names it in the error.
    ///
    /// # Errors
    /// When the runtime cannot watch the ring's fd.
    pub fn new(ring: RingBuf<MapData>, what: &str) -> anyhow::Result<Self> {
        Self::watch(ring)
            .map_err(|b| anyhow::anyhow!("failed to watch the {what} ring buffer: {}", b.1))
    }

    /// [`Reader::new`], handing the ring back when it cannot be watched
    /// (programs loaded later may need it open).
    ///
    /// # Errors
    /// When the runtime cannot watch the ring's fd.
    pub fn watch(ring: RingBuf<MapData>) -> Result<Self, Box<(RingBuf<MapData>, std::io::Error)>> {
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open and
        // is not reused for as long as it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| Box::new(e.into_parts()))?;
        Ok(Self { fd, backlog: false })
    }

    /// Waits until records are there (at most `wait`, when given) and hands
    /// up to `max` of them to `record`. When `wait` passes first, the ring is
    /// read all the same (a wake-up lost for any reason costs one tick, not
    /// the ring).
    ///
    /// # Errors
    /// When waiting on the fd fails.
    pub async fn drain(
        &mut self,
        wait: Option<Duration>,
        max: usize,
        record: impl FnMut(&[u8]),
    ) -> anyhow::Result<()> {
        self.wait(wait.map(|w| tokio::time::Instant::now() + w))
            .await?;
        self.read(max, record);
        Ok(())
    }

    /// Waits until records may be there (at most until `until`, when
    /// given). Cancel-safe: dropped before it returns, it changes nothing,
    /// so it can race other wake-ups in a `select!`.
    ///
    /// # Errors
    /// When waiting on the fd fails.
    pub async fn wait(&mut self, until: Option<tokio::time::Instant>) -> anyhow::Result<()> {
        if self.backlog {
            // Behind: read on without waiting, but let the runtime's other
            // tasks (the ban and fleet writers this work wakes) run first.
            tokio::task::yield_now().await;
            self.backlog = false;
            return Ok(());
        }
        let ready = match until {
            None => Some(self.fd.readable_mut().await?),
            Some(t) => match tokio::time::timeout_at(t, self.fd.readable_mut()).await {
                Ok(guard) => Some(guard?),
                Err(_) => None,
            },
        };
        // Cleared before reading: the kernel wakes the reader for a record
        // written once it has caught up, so one written after the ring is
        // found empty by `read` sets the readiness again.
        if let Some(mut guard) = ready {
            guard.clear_ready();
        }
        Ok(())
    }

    /// Hands up to `max` records to `record` without waiting; returns how
    /// many.
    pub fn read(&mut self, max: usize, mut record: impl FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        for n in 0..max {
            let Some(item) = ring.next() else {
                return n;
            };
            record(&item);
        }
        // Stopped at `max` with records perhaps left: no wake-up comes for
        // them while the reader is behind, so the next wait returns at once.
        self.backlog = true;
        max
    }
}
