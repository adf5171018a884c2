//! Host limits and settings the relay depends on, checked once at start-up.

use tracing::{info, warn};

fn get(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    (unsafe { libc::getrlimit(resource, &mut lim) } == 0).then_some(lim)
}

fn set(resource: libc::__rlimit_resource_t, cur: u64, max: u64) -> std::io::Result<()> {
    let want = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: setrlimit only reads the struct passed.
    if unsafe { libc::setrlimit(resource, &want) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit of `resource` to its hard limit; returns the new soft limit.
fn raise(resource: libc::__rlimit_resource_t, name: &str) -> Option<u64> {
    let lim = get(resource)?;
    if lim.rlim_cur < lim.rlim_max {
        if let Err(e) = set(resource, lim.rlim_max, lim.rlim_max) {
            warn!(limit = name, error = %e, "could not raise limit");
            return Some(lim.rlim_cur);
        }
        return Some(lim.rlim_max);
    }
    Some(lim.rlim_cur)
}

/// The most open files the kernel allows any process (`fs.nr_open`).
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Raises RLIMIT_NOFILE to at least `wanted` if it can: the soft limit up to the hard limit,
/// and, when privileged (CAP_SYS_RESOURCE, usually root), the hard limit too, up to
/// `fs.nr_open`. Returns the soft limit in force.
fn raise_open_files(wanted: u64) -> Option<u64> {
    let lim = get(libc::RLIMIT_NOFILE)?;
    let (cur, max) = (lim.rlim_cur, lim.rlim_max);
    if max < wanted {
        let target = nr_open().map_or(wanted, |n| wanted.min(n));
        // SAFETY: geteuid has no preconditions.
        if target > max && unsafe { libc::geteuid() } == 0 {
            match set(libc::RLIMIT_NOFILE, target, target) {
                Ok(()) => {
                    info!(from = max, to = target, "raised the open-files hard limit");
                    return Some(target);
                }
                Err(e) => warn!(
                    hard_limit = max,
                    wanted,
                    error = %e,
                    "could not raise the open-files hard limit (no CAP_SYS_RESOURCE?)"
                ),
            }
        }
    }
    if cur < max
        && let Err(e) = set(libc::RLIMIT_NOFILE, max, max)
    {
        warn!(limit = "RLIMIT_NOFILE", error = %e, "could not raise limit");
        return Some(cur);
    }
    Some(max)
}

/// Open files bound the sockets of each shard's registered-file table (4 per UDP session) and
/// TCP sessions; locked memory bounds io_uring. `wanted_files` is the open-files limit the
/// configured capacity needs. Returns the soft open-files limit now in force.
pub fn raise_limits(wanted_files: u64) -> Option<u64> {
    let files = raise_open_files(wanted_files);
    let memlock = raise(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK");
    info!(open_files = ?files, wanted_files, memlock_bytes = ?memlock, "resource limits");
    if files.is_some_and(|f| f < wanted_files) {
        warn!(
            open_files = ?files,
            wanted_files,
            "the open-files limit caps how many sockets each shard can hold (raise it with \
             ulimit -n or LimitNOFILE=); creates beyond that are refused with RESOURCE_EXHAUSTED"
        );
    }
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
