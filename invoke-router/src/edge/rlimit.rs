//! The open-files limit: raised (soft to hard) at start, since every
//! connection, VM and socket is a descriptor.

/// Descriptors kept free of client connections: VMs' sockets and files,
/// the registry, the code store, logs.
pub const RESERVED_FDS: u64 = 512;

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the soft
/// limit in force afterwards.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// The connection cap that fits `soft` descriptors: `wanted`, or fewer so
/// that [`RESERVED_FDS`] stay free (at least 16).
pub fn fitting_cap(wanted: usize, soft: u64) -> usize {
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    wanted.min(room).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_and_fits_the_cap() {
        let soft = raise_nofile().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(fitting_cap(4096, 1024), 512);
        assert_eq!(fitting_cap(4096, 1 << 20), 4096);
        assert_eq!(fitting_cap(4096, 100), 16);
    }
}
