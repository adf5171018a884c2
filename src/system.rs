//! Host limits and settings the relay depends on, checked once at start-up.

use tracing::{info, warn};

/// Raises the soft limit of `resource` to its hard limit; returns the new soft limit.
fn raise(resource: libc::__rlimit_resource_t, name: &str) -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(resource, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(resource, &want) != 0 {
                warn!(limit = name, error = %std::io::Error::last_os_error(), "could not raise limit");
                return Some(lim.rlim_cur);
            }
            return Some(lim.rlim_max);
        }
        Some(lim.rlim_cur)
    }
}

/// Open files bound the number of sockets (4 per UDP session); locked memory bounds io_uring.
/// Returns the soft open-files limit now in force.
pub fn raise_limits() -> Option<u64> {
    let files = raise(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE");
    let memlock = raise(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK");
    info!(open_files = ?files, memlock_bytes = ?memlock, "resource limits");
    if memlock.is_some_and(|m| m < 8 << 20) {
        warn!(
            memlock_bytes = ?memlock,
            "RLIMIT_MEMLOCK is below 8 MiB; io_uring set-up may fail (raise it with ulimit -l or LimitMEMLOCK=)"
        );
    }
    files
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}
