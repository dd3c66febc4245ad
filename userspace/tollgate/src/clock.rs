//! Clocks. The kernel's ban expiry uses the boot-time clock (it keeps counting
//! through suspend and is what `bpf_ktime_get_boot_ns` reads); the store uses
//! wall-clock Unix seconds so bans survive a reboot with their real deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds on the boot-time clock.
#[must_use]
pub fn boot_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME).map_or(0, |ts| {
        u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec()).unwrap_or(0)
    })
}

/// CPU time this thread (`ClockId::CLOCK_THREAD_CPUTIME_ID`) or the whole
/// process (`CLOCK_PROCESS_CPUTIME_ID`) has used: start-up phases are
/// logged with it, a figure that a busy machine does not inflate.
#[must_use]
pub fn cpu(clock: ClockId) -> Duration {
    clock_gettime(clock).map_or(Duration::ZERO, |ts| {
        Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        )
    })
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (where one second is too coarse: a
/// ban and an unban made the same second on two hosts).
#[must_use]
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The boot-clock deadline for a wall-clock expiry (Unix seconds); `0` means
/// "never" on the kernel side, so a deadline already past maps to 1 (expired).
#[must_use]
pub fn boot_deadline(expires_unix: Option<u64>) -> u64 {
    match expires_unix {
        None => 0,
        Some(t) => {
            let now = unix_now();
            let left = Duration::from_secs(t.saturating_sub(now));
            if left.is_zero() {
                1
            } else {
                boot_ns().saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
            }
        }
    }
}

/// RFC 3339 rendering of Unix seconds (UTC).
#[must_use]
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// RFC 3339, UTC, milliseconds, of fractional Unix seconds (negative or
/// absurd values read as the epoch).
#[must_use]
pub fn rfc3339_ms(unix: f64) -> String {
    let d = Duration::try_from_secs_f64(unix).unwrap_or_default();
    humantime::format_rfc3339_millis(UNIX_EPOCH + d).to_string()
}
