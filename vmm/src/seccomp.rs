//! Seccomp filters, one per thread kind, built with `seccompiler`.
//!
//! Each thread installs its own filter (seccomp applies per thread): the
//! vCPU threads before their first `KVM_RUN`, the main thread (the device
//! event loop) before it lets the vCPUs go. Anything outside a thread's
//! list kills the whole VMM with SIGSYS. The lists hold what the VMM does
//! once the VM runs; everything else (opening files, creating the VM,
//! mapping guest memory, starting threads) happens before the filters go
//! in. Like Firecracker's, they filter the arguments that pick a
//! dangerous variant: `ioctl` by request, `socket` by family, `mmap` and
//! `mprotect` without `PROT_EXEC`, `fcntl` by command.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// KVM ioctl requests a vCPU thread makes while the guest runs (linux/kvm.h).
pub mod kvm_ioctl {
    /// `KVM_RUN`.
    pub const RUN: u64 = 0xae80;
    /// `KVM_GET_REGS` (failure reports).
    pub const GET_REGS: u64 = 0x8090_ae81;
    /// `KVM_GET_SREGS` (failure reports).
    pub const GET_SREGS: u64 = 0x8138_ae83;
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: the device event loop.
    Main,
    /// A vCPU thread.
    Vcpu,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules or could not compile them.
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

/// The compiled filters of one VMM.
#[derive(Debug, Clone)]
pub struct Filters {
    /// For the main (event loop) thread.
    pub main: BpfProgram,
    /// For every vCPU thread.
    pub vcpu: BpfProgram,
}

impl Filters {
    /// Compiles both filters.
    pub fn build() -> Result<Self, SeccompError> {
        Ok(Self {
            main: compile(ThreadKind::Main)?,
            vcpu: compile(ThreadKind::Vcpu)?,
        })
    }
}

/// Installs `filter` on the calling thread (and sets `no_new_privs`).
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter)?;
    Ok(())
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index below 6")
}

/// One rule: argument `arg` (a 32-bit value) equals `value`.
fn arg_eq(arg: u8, value: u64) -> SeccompRule {
    SeccompRule::new(vec![cond(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )])
    .expect("one condition")
}

/// One rule: argument `arg` has none of the bits of `mask`.
fn arg_lacks(arg: u8, mask: u64) -> SeccompRule {
    SeccompRule::new(vec![cond(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )])
    .expect("one condition")
}

/// Syscalls both thread kinds make: memory management, locks, time,
/// signals, logging, thread exit.
fn common_rules() -> BTreeMap<i64, Vec<SeccompRule>> {
    let prot_exec = libc::PROT_EXEC as u64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
        // Logging, the console and eventfds (interrupts, wake-ups).
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_read,
        libc::SYS_close,
        // The allocator.
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        // Locks, time, sleeps.
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        // Signals (the vCPU kick, SIGTERM) and ends.
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Device resets re-arm or drop vsock state from either thread.
        libc::SYS_timerfd_settime,
        libc::SYS_epoll_ctl,
        libc::SYS_shutdown,
    ]
    .into_iter()
    .map(|nr| (nr, Vec::new()))
    .collect();
    // Flags of open fds (non-blocking sockets, close-on-exec; kvm-ioctls
    // checks the vCPU fd after an interrupted KVM_RUN), nothing else.
    rules.insert(
        libc::SYS_fcntl,
        vec![
            arg_eq(1, libc::F_GETFL as u64),
            arg_eq(1, libc::F_SETFL as u64),
            arg_eq(1, libc::F_GETFD as u64),
            arg_eq(1, libc::F_SETFD as u64),
        ],
    );
    // Memory may be mapped, never made executable.
    rules.insert(libc::SYS_mmap, vec![arg_lacks(2, prot_exec)]);
    rules.insert(libc::SYS_mprotect, vec![arg_lacks(2, prot_exec)]);
    rules
}

/// The rules of `kind`: what that thread may call once the guest runs.
pub fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = common_rules();
    match kind {
        ThreadKind::Main => {
            for nr in [
                // The event loop.
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                // Block device requests.
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_lseek,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                // vsock: host connections in, guest connections out.
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_recvmsg,
                libc::SYS_sendmsg,
                libc::SYS_getsockopt,
                // Stopping: kick the vCPU threads, remove the socket file.
                libc::SYS_tgkill,
                libc::SYS_getpid,
                libc::SYS_gettid,
                libc::SYS_unlink,
                libc::SYS_unlinkat,
                // File::metadata of open files.
                libc::SYS_fstat,
                libc::SYS_newfstatat,
                libc::SYS_statx,
            ] {
                rules.insert(nr, Vec::new());
            }
            // Guest-initiated vsock connections are Unix sockets only.
            rules.insert(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)]);
            rules.insert(
                libc::SYS_ioctl,
                vec![arg_eq(1, libc::FIONBIO), arg_eq(1, libc::FIOCLEX)],
            );
        }
        ThreadKind::Vcpu => {
            rules.insert(
                libc::SYS_ioctl,
                vec![
                    arg_eq(1, kvm_ioctl::RUN),
                    arg_eq(1, kvm_ioctl::GET_REGS),
                    arg_eq(1, kvm_ioctl::GET_SREGS),
                ],
            );
        }
    }
    rules
}

/// Compiles the filter of `kind`: listed syscalls pass, anything else
/// kills the process.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(
        rules(kind),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The debug trigger of `--debug-seccomp-trigger`: a syscall no filter
/// allows (opening a file), so a filtered VMM dies with SIGSYS here.
pub fn trigger_forbidden_syscall() {
    // SAFETY: a plain open of "/" whose result is only closed; with the
    // filter in place the kernel kills the process before it returns.
    let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_within_the_bpf_limit() {
        let filters = Filters::build().unwrap();
        assert!(!filters.main.is_empty() && filters.main.len() < 4096);
        assert!(!filters.vcpu.is_empty() && filters.vcpu.len() < 4096);
    }

    #[test]
    fn nothing_opens_files_or_runs_programs() {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
            let rules = rules(kind);
            for forbidden in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_mount,
                libc::SYS_setuid,
                libc::SYS_bpf,
                libc::SYS_kill,
                libc::SYS_process_vm_writev,
            ] {
                assert!(
                    !rules.contains_key(&forbidden),
                    "{kind:?} allows syscall {forbidden}"
                );
            }
        }
    }

    #[test]
    fn vcpus_only_run_the_guest() {
        let vcpu = rules(ThreadKind::Vcpu);
        for main_only in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_accept4,
            libc::SYS_epoll_wait,
            libc::SYS_pwrite64,
            libc::SYS_unlink,
            libc::SYS_tgkill,
        ] {
            assert!(!vcpu.contains_key(&main_only), "vCPU allows {main_only}");
        }
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), 3, "KVM_RUN and two GETs only");
    }

    #[test]
    fn a_forbidden_syscall_kills_the_filtered_process() {
        // In a child: the test process itself must survive.
        let filter = compile(ThreadKind::Vcpu).unwrap();
        // SAFETY: the child only installs the filter, calls open and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if install(&filter).is_err() {
                // SAFETY: leaving the child at once.
                unsafe { libc::_exit(3) };
            }
            trigger_forbidden_syscall();
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
