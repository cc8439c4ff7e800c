//! The two clocks memtrace uses: wall time in milliseconds since the Unix epoch (timestamps of
//! snapshots and alerts) and the kernel's monotonic clock (the clock of `bpf_ktime_get_ns`, in which
//! kernel events and allocation ages are stamped).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` (milliseconds since the Unix epoch) as an RFC 3339 UTC time with milliseconds,
/// `2024-01-15T12:00:00.000Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The kernel's monotonic clock in nanoseconds (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(
        u64::try_from(ts.tv_sec)
            .ok()?
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(ts.tv_nsec).ok()?),
    )
}

/// When the machine booted, in milliseconds since the Unix epoch: the wall clock minus the time
/// since boot (`CLOCK_BOOTTIME`, the clock of process start times in `/proc/PID/stat`).
pub fn boot_time_ms() -> Option<u64> {
    let real = clock_ns(libc::CLOCK_REALTIME)?;
    let boot = clock_ns(libc::CLOCK_BOOTTIME)?;
    real.checked_sub(boot).map(|ns| ns / 1_000_000)
}

/// The kernel's monotonic clock in whole seconds (the clock of allocation birth times).
pub fn monotonic_seconds() -> u64 {
    monotonic_ns() / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_705_320_000_123), "2024-01-15T12:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
        assert!(now_ms() > 1_600_000_000_000);
        assert_eq!(monotonic_seconds(), monotonic_ns() / 1_000_000_000);
        // The machine booted in the past, after 2001.
        let boot = boot_time_ms().expect("boot time");
        assert!(boot > 1_000_000_000_000 && boot < now_ms());
    }
}
