//! Process hygiene and the privilege drop: inherited fds, environment,
//! rlimits, uid/gid, capabilities, `no_new_privs`.

use caps::CapSet;
use nix::unistd::{Gid, Uid};

use super::JailError;

fn os(what: &str) -> impl FnOnce(nix::Error) -> JailError + '_ {
    move |e| JailError::Host {
        what: what.to_string(),
        source: std::io::Error::from(e),
    }
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> JailError + '_ {
    move |e| JailError::Host {
        what: what.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Closes every fd above stderr the VMM inherited.
pub fn close_inherited_fds() -> Result<(), JailError> {
    // SAFETY: plain syscall; nothing in this process holds fds above 2 yet
    // (the VMM opens its resources only after the jail is entered).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret != 0 {
        return Err(JailError::Host {
            what: "closing inherited fds".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

extern "C" {
    static environ: *const *mut libc::c_char;
}

/// Removes every environment variable and wipes the strings it was made
/// of (they stay in memory, and in `/proc/<pid>/environ`, otherwise). The
/// process must be single-threaded.
pub fn clear_env() {
    let mut strings = Vec::new();
    // SAFETY: single-threaded, so `environ` is stable while it is walked;
    // it is a NULL-terminated array of C strings.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            strings.push(*p);
            p = p.add(1);
        }
    }
    let names: Vec<_> = std::env::vars_os().map(|(k, _)| k).collect();
    for name in names {
        std::env::remove_var(name);
    }
    for s in strings {
        // SAFETY: each was a live, writable NUL-terminated string of the
        // environment; no longer referenced by `environ` after the removal.
        unsafe { std::ptr::write_bytes(s, 0, libc::strlen(s)) };
    }
}

/// Caps open files, the size of files written, and core dumps.
pub fn set_rlimits(nofile: u64, fsize_bytes: u64) -> Result<(), JailError> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(os("setting RLIMIT_NOFILE"))?;
    setrlimit(Resource::RLIMIT_FSIZE, fsize_bytes, fsize_bytes)
        .map_err(os("setting RLIMIT_FSIZE"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(os("setting RLIMIT_CORE"))?;
    Ok(())
}

/// Becomes `uid`:`gid` with no supplementary groups, no capabilities in
/// any set (bounding included) and `no_new_privs`. Single-threaded only:
/// capability sets are per thread, and threads started later inherit them.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // The bounding set needs CAP_SETPCAP, so it goes while we are root.
    caps::clear(None, CapSet::Bounding).map_err(caps_err("clearing the bounding set"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing the inheritable set"))?;
    nix::unistd::setgroups(&[]).map_err(os("dropping supplementary groups"))?;
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setresgid(gid, gid, gid).map_err(os("setting the gid"))?;
    // Without SECBIT_KEEP_CAPS this also empties the permitted and effective sets.
    nix::unistd::setresuid(uid, uid, uid).map_err(os("setting the uid"))?;
    caps::clear(None, CapSet::Effective).map_err(caps_err("clearing the effective set"))?;
    caps::clear(None, CapSet::Permitted).map_err(caps_err("clearing the permitted set"))?;
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        let left = caps::read(None, set).map_err(caps_err("reading capabilities"))?;
        if !left.is_empty() {
            return Err(JailError::Unsupported(format!(
                "capabilities {left:?} remain in the {set:?} set"
            )));
        }
    }
    // SAFETY: plain prctl calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(JailError::Host {
                what: "setting no_new_privs".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // No ptrace or core dumps by the VM's uid; /proc/<pid> stays root's.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    Ok(())
}
