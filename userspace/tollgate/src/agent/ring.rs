//! Reading a datapath ring buffer: the one loop body both readers (rate-limit
//! offenders in `agent/mod.rs`, API samples in `agent/api.rs`) share. Tokio
//! wakes the reader when the ring is readable; it drains, and clears the
//! readiness only once the ring is empty (and then reads once more), so
//! nothing left behind waits for the next record to arrive.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// A ring buffer registered with the runtime.
pub struct Reader {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl Reader {
    /// Watches `ring`; `what` names it in the error.
    ///
    /// # Errors
    /// When the runtime cannot watch the ring's fd.
    pub fn new(ring: RingBuf<MapData>, what: &str) -> anyhow::Result<Self> {
        // SAFETY: the AsyncFd owns the ring buffer, so its fd stays open and
        // is not reused for as long as it is registered.
        let fd =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                anyhow::anyhow!(
                    "failed to watch the {what} ring buffer: {}",
                    e.into_parts().1
                )
            })?;
        Ok(Self { fd })
    }

    /// Waits until records are there (at most `wait`, when given) and hands
    /// up to `max` of them to `record`. Returns without any when `wait`
    /// passed first.
    ///
    /// # Errors
    /// When waiting on the fd fails.
    pub async fn drain(
        &mut self,
        wait: Option<Duration>,
        max: usize,
        mut record: impl FnMut(&[u8]),
    ) -> anyhow::Result<()> {
        let mut guard = match wait {
            None => self.fd.readable_mut().await?,
            Some(w) => match tokio::time::timeout(w, self.fd.readable_mut()).await {
                Ok(guard) => guard?,
                Err(_) => return Ok(()),
            },
        };
        let mut taken = 0;
        let mut cleared = false;
        while taken < max {
            let Some(item) = guard.get_inner_mut().next() else {
                if cleared {
                    break;
                }
                // The kernel wakes the reader only for a record written when
                // it had caught up: one written between the read that found
                // the ring empty and this clear would lose its wake-up and
                // wait, unjudged, for the next record. So look once more.
                guard.clear_ready();
                cleared = true;
                continue;
            };
            record(&item);
            taken += 1;
        }
        Ok(())
    }
}
