//! The jail's mount namespace: bind mounts into the root, `pivot_root`,
//! the old root detached.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::layout::Bind;
use super::JailError;

fn os(what: String) -> impl FnOnce(nix::Error) -> JailError {
    move |e| JailError::Host {
        what,
        source: std::io::Error::from(e),
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Host { what, source }
}

/// Creates the (empty) mount points of `binds` under `root`, on the host,
/// owned by root: the VM's uid can write none of them.
pub fn create_mount_points(root: &Path, binds: &[Bind]) -> Result<(), JailError> {
    for b in binds {
        let at = inside(root, &b.target);
        let parent = at.parent().unwrap_or(root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io(format!("creating {}", parent.display())))?;
        if b.dir {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&at)
                .map_err(io(format!("creating {}", at.display())))?;
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&at)
                .map_err(io(format!("creating {}", at.display())))?;
        }
    }
    Ok(())
}

/// `target` (absolute, inside the jail) as a host path under `root`.
pub fn inside(root: &Path, target: &Path) -> std::path::PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// In a fresh mount namespace: binds everything into `root`, makes it
/// the root, detaches the old one (with every host mount under it) and
/// makes the root read-only.
pub fn pivot_into(root: &Path, binds: &[Bind]) -> Result<(), JailError> {
    let none: Option<&str> = None;
    // Nothing we mount may propagate back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(os("making / private".into()))?;
    // pivot_root cannot leave a root mount without a parent (an initramfs
    // root, as in the soft host): first enter a recursive bind of / at the
    // root's own path, so the root left behind is always a bind mount. Seen
    // from inside, `root` is then still the plain, empty directory.
    mount(
        Some("/"),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(os(format!("binding / onto {}", root.display())))?;
    nix::unistd::chroot(root).map_err(os(format!("entering {}", root.display())))?;
    std::env::set_current_dir("/").map_err(io("entering /".into()))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(os(format!("binding {} onto itself", root.display())))?;
    for b in binds {
        let at = inside(root, &b.target);
        mount(Some(&b.source), &at, none, MsFlags::MS_BIND, none).map_err(os(format!(
            "binding {} to {}",
            b.source.display(),
            b.target.display()
        )))?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
        if b.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        if b.target != Path::new(super::layout::KVM_DEVICE) {
            flags |= MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        }
        mount(none, &at, none, flags, none)
            .map_err(os(format!("restricting {}", b.target.display())))?;
    }
    std::env::set_current_dir(root).map_err(io(format!("entering {}", root.display())))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one
    // and is detached right away, so no directory for it is needed.
    nix::unistd::pivot_root(".", ".").map_err(os("pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(os("detaching the old root".into()))?;
    std::env::set_current_dir("/").map_err(io("entering /".into()))?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(os("making the jail root read-only".into()))?;
    Ok(())
}
