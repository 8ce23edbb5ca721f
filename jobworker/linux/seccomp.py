"""
Which system calls an isolated job may make: the policy, and its program.

A job is an attacker with a shell; namespaces, cgroups and a dropped user
bound what it can reach, but every system call is still a way into the
kernel. After Docker's default profile, the filter is an allow-list: what
ordinary programs (shells, coreutils, interpreters, compilers, git, threads,
subprocesses, shared memory, sockets) need is allowed, everything else fails
with ``EPERM``, as a call the job lacks the privilege for would. Beyond
Docker's, no io_uring (a large kernel surface that bypasses the filter's
view of each operation), no ``name_to_handle_at``, and sockets only of the
families ordinary programs use.

A few rules look at arguments:

- ``clone3`` fails with ``ENOSYS``: its flags are in memory, out of the
  filter's sight, and glibc (2.34 on) falls back to ``clone`` on exactly
  that error, so threads and ``posix_spawn`` keep working.
- ``clone`` and ``unshare`` are allowed without namespace flags: no new user
  namespace (the usual first step of a kernel exploit), mount, PID, network,
  UTS, IPC, cgroup or time namespace. ``unshare -U`` fails with ``EPERM``.
- ``socket``: Unix, IPv4, IPv6, and netlink for routing (``ip addr`` works,
  and glibc's ``getifaddrs``) and socket diagnostics (``ss``); every other
  family (packet, vsock, which reaches the VM's host, crypto, bluetooth, and
  the rarely used ones whose modules load on demand) and every other netlink
  protocol (audit, uevents, netfilter, generic) fails with ``EPERM``.
- ``personality``: Linux itself, the query, and the harmless flags
  (``setarch i386``, ``--uname-2.6``, ``-R``, which gdb uses too).
- ``ptrace`` (with ``process_vm_readv``/``writev``) is allowed, as Docker
  does from Linux 4.8 on, where the filter is checked again after a tracer
  changes a call: a job tracing its own children (gdb, strace) is ordinary,
  and the PID namespace, the job's user and ``ptrace_scope`` bound whom it
  can trace (its init is root: not it).

Only the native ABI: libseccomp adds x86_64 alone, so a call through the
i386 entry point (``int 0x80``) or with an x32 number (``__X32_SYSCALL_BIT``)
is of a "bad architecture", and kills the process with ``SIGSYS``: no
ordinary x86_64 program makes one, and the compat entry points have had
their share of kernel bugs.

The server compiles the program once, at start-up (``job_syscall_filter``),
into a sealed memfd each helper inherits and reads; the helper loads it, with
``PR_SET_NO_NEW_PRIVS``, as the last step before the command's ``execve``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from jobworker.linux.libseccomp import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    ATTR_ACT_BADARCH,
    ATTR_CTL_OPTIMIZE,
    CMP_EQ,
    CMP_MASKED_EQ,
    ArgCmp,
    Libseccomp,
    LibseccompError,
    act_errno,
)

# What a call nothing allows gets: "not permitted", as without privileges.
DEFAULT_ERRNO = errno.EPERM


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Allowed whatever their arguments, by what they are for (x86_64 names).
ALLOWED = (
    _names(  # processes and threads (clone: see CONDITIONAL)
        """
        fork vfork execve execveat exit exit_group wait4 waitid
        kill tkill tgkill pidfd_open pidfd_send_signal process_mrelease
        getpid getppid gettid getpgid setpgid getpgrp getsid setsid
        set_tid_address set_robust_list get_robust_list rseq restart_syscall
        arch_prctl set_thread_area get_thread_area prctl seccomp
        capget capset futex futex_waitv futex_wake futex_wait futex_requeue
        membarrier getcpu sched_yield sched_getaffinity sched_setaffinity
        sched_getparam sched_setparam sched_getscheduler sched_setscheduler
        sched_getattr sched_setattr sched_get_priority_max
        sched_get_priority_min sched_rr_get_interval getpriority setpriority
        ioprio_get ioprio_set getrlimit setrlimit prlimit64 getrusage times
        """
    )
    | _names(  # credentials: changing them still needs the privilege
        """
        getuid geteuid getgid getegid getresuid getresgid getgroups
        setuid setgid setreuid setregid setresuid setresgid
        setfsuid setfsgid setgroups
        """
    )
    | _names(  # signals
        """
        rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending
        rt_sigsuspend rt_sigtimedwait rt_sigqueueinfo rt_tgsigqueueinfo
        sigaltstack signalfd signalfd4 pause alarm
        """
    )
    | _names(  # memory
        """
        brk mmap munmap mremap mprotect madvise mincore msync
        mlock mlock2 munlock mlockall munlockall remap_file_pages
        pkey_alloc pkey_free pkey_mprotect map_shadow_stack
        memfd_create memfd_secret
        """
    )
    | _names(  # files and descriptors
        """
        read write readv writev pread64 pwrite64 preadv pwritev
        preadv2 pwritev2 open openat openat2 creat close close_range
        dup dup2 dup3 lseek fcntl flock ioctl fsync fdatasync sync syncfs
        sync_file_range fadvise64 readahead fallocate truncate ftruncate
        stat fstat lstat newfstatat statx statfs fstatfs
        access faccessat faccessat2 getdents getdents64 getcwd chdir fchdir
        mkdir mkdirat rmdir rename renameat renameat2 link linkat
        unlink unlinkat symlink symlinkat readlink readlinkat
        chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat umask
        utime utimes futimesat utimensat mknod mknodat
        getxattr lgetxattr fgetxattr setxattr lsetxattr fsetxattr
        listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
        copy_file_range sendfile splice tee vmsplice cachestat
        inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
        landlock_create_ruleset landlock_add_rule landlock_restrict_self
        io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents
        """
    )
    | _names(  # waiting, timers and clocks
        """
        poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl
        epoll_wait epoll_pwait epoll_pwait2 eventfd eventfd2
        timerfd_create timerfd_settime timerfd_gettime
        nanosleep clock_nanosleep clock_gettime clock_getres
        gettimeofday time getitimer setitimer timer_create timer_settime
        timer_gettime timer_getoverrun timer_delete
        """
    )
    | _names(  # IPC, in the job's own IPC namespace
        """
        pipe pipe2 shmget shmat shmdt shmctl semget semop semtimedop semctl
        msgget msgsnd msgrcv msgctl mq_open mq_unlink mq_timedsend
        mq_timedreceive mq_notify mq_getsetattr
        """
    )
    | _names(  # sockets (socket, socketpair: see CONDITIONAL)
        """
        bind listen accept accept4 connect getsockname getpeername
        getsockopt setsockopt sendto recvfrom sendmsg recvmsg
        sendmmsg recvmmsg shutdown
        """
    )
    | _names("uname sysinfo getrandom")
)

# Tracing: allowed where the kernel checks the filter again after a tracer
# has changed a call (Linux 4.8), as Docker does.
TRACING = _names("ptrace process_vm_readv process_vm_writev")
TRACING_SINCE = (4, 8)

# The calls refused on purpose, each a door into the kernel or the host that
# a job has no use for. Any other call not allowed fails as they do; these
# are the ones a reader would look for.
REFUSED = (
    _names(  # mounts and namespaces: the job's view is the helper's to make
        """
        mount umount2 pivot_root chroot move_mount open_tree mount_setattr
        fsopen fsmount fsconfig fspick setns
        """
    )
    | _names(  # kernel keyrings: not namespaced
        "keyctl add_key request_key"
    )
    | _names(  # large kernel surfaces, the usual road to an exploit
        """
        bpf perf_event_open userfaultfd
        io_uring_setup io_uring_enter io_uring_register
        """
    )
    | _names(  # the kernel itself, the machine, the host's clocks and logs
        """
        init_module finit_module delete_module kexec_load kexec_file_load
        reboot swapon swapoff acct settimeofday clock_settime adjtimex
        clock_adjtime syslog quotactl quotactl_fd lookup_dcookie
        nfsservctl sethostname setdomainname vhangup
        iopl ioperm modify_ldt vm86 vm86old
        """
    )
    | _names(  # files by handle (a way out of a mount namespace), fanotify
        """
        open_by_handle_at name_to_handle_at fanotify_init fanotify_mark
        """
    )
    | _names(  # NUMA placement, other processes' memory and files: Docker's too
        """
        mbind set_mempolicy get_mempolicy set_mempolicy_home_node
        migrate_pages move_pages kcmp pidfd_getfd process_madvise
        """
    )
    | _names("uselib ustat sysfs _sysctl")  # obsolete
)
DENIED: dict[str, int] = {
    # Makes no thread: glibc then uses clone, whose flags the filter sees.
    "clone3": errno.ENOSYS,
    **dict.fromkeys(sorted(REFUSED), DEFAULT_ERRNO),
}

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080  # unshare only: in clone's flags, the exit signal
NAMESPACE_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC) | (
    CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE, NETLINK_SOCK_DIAG = 0, 4
# personality(2): PER_LINUX; with PER_LINUX32, UNAME26, ADDR_NO_RANDOMIZE;
# and 0xffffffff, which only asks.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0x40000, 0x40008, 0xFFFFFFFF)


@dataclass(frozen=True)
class Arg:
    """A test of argument ``index``: equal to ``value``, after ``& mask``."""

    index: int
    value: int
    mask: int | None = None


@dataclass(frozen=True)
class Rule:
    """``syscall`` is allowed (``errno`` None) or fails, when all ``when``."""

    syscall: str
    errno: int | None = None
    when: tuple[Arg, ...] = ()


def _without(index: int, flags: int) -> Arg:
    return Arg(index, 0, mask=flags)


# Allowed only with these arguments: otherwise DEFAULT_ERRNO. Rules for one
# call are alternatives; the tests of one rule all must hold.
CONDITIONAL: tuple[Rule, ...] = (
    Rule("clone", when=(_without(0, NAMESPACE_FLAGS),)),
    Rule("unshare", when=(_without(0, NAMESPACE_FLAGS | CLONE_NEWTIME),)),
    *(Rule("socket", when=(Arg(0, f),)) for f in (AF_UNIX, AF_INET, AF_INET6)),
    *(
        Rule("socket", when=(Arg(0, AF_NETLINK), Arg(2, protocol)))
        for protocol in (NETLINK_ROUTE, NETLINK_SOCK_DIAG)
    ),
    Rule("socketpair", when=(Arg(0, AF_UNIX),)),
    *(Rule("personality", when=(Arg(0, p),)) for p in PERSONALITIES),
)


class SeccompUnavailable(Exception):
    """The system call filter of isolated jobs cannot be made on this host."""


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``release`` (default: the running kernel's)."""
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return (0, 0)


def job_rules(kernel: tuple[int, int] | None = None) -> list[Rule]:
    """Every rule of the jobs' filter, for ``kernel`` (default: this one)."""
    allowed = ALLOWED
    if (kernel or kernel_version()) >= TRACING_SINCE:
        allowed = allowed | TRACING
    rules = [Rule(name) for name in sorted(allowed)]
    rules += CONDITIONAL
    rules += [
        Rule(name, errno=number)
        for name, number in sorted(DENIED.items())
        if number != DEFAULT_ERRNO  # the default needs no rule (nor may have)
    ]
    return rules


def compile_program(rules: Iterable[Rule], lib: Libseccomp | None = None) -> bytes:
    """
    The BPF program (``struct sock_filter`` after another) that enforces
    ``rules`` on the native architecture, every other call failing with
    DEFAULT_ERRNO. Raises ``LibseccompError``, also for a name libseccomp
    does not know as one of this architecture's system calls.
    """
    lib = lib or Libseccomp()
    with lib.filter(act_errno(DEFAULT_ERRNO)) as built:
        built.set_attribute(ATTR_ACT_BADARCH, ACT_KILL_PROCESS)
        built.set_attribute(ATTR_CTL_OPTIMIZE, 2)
        for rule in rules:
            number = lib.resolve(rule.syscall)
            if number < 0:
                raise LibseccompError(f"not a system call here: {rule.syscall}")
            action = ACT_ALLOW if rule.errno is None else act_errno(rule.errno)
            built.add_rule(action, number, *map(_comparison, rule.when))
        with _memfd("jobworker-seccomp-export") as fd:
            built.export_bpf(fd)
            return os.pread(fd, os.fstat(fd).st_size, 0)


def _comparison(arg: Arg) -> ArgCmp:
    if arg.mask is None:
        return ArgCmp(arg.index, CMP_EQ, arg.value)
    return ArgCmp(arg.index, CMP_MASKED_EQ, arg.mask, arg.value)


@contextmanager
def _memfd(name: str) -> Iterator[int]:
    """A memfd, closed at the end of the block."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SyscallFilter:
    """
    A compiled program in a sealed memfd: nothing can change it any more,
    and every helper inherits the same descriptor (and reads it with
    ``pread``, never moving the offset they share). Open for the server's
    life; close-on-exec, so only the helpers given it see it.
    """

    fd: int
    size: int

    @classmethod
    def holding(cls, program: bytes) -> SyscallFilter:
        fd = os.memfd_create("jobworker-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, program)  # a memfd takes it in one write
            seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals | fcntl.F_SEAL_WRITE)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, len(program))

    def program(self) -> bytes:
        return os.pread(self.fd, self.size, 0)


@functools.cache
def job_syscall_filter() -> SyscallFilter:
    """
    The isolated jobs' filter, compiled on the first call (at the server's
    start) and the same for the process's life: per job, only its descriptor
    is passed on. Raises ``SeccompUnavailable`` where libseccomp is missing.
    """
    try:
        return SyscallFilter.holding(compile_program(job_rules()))
    except (LibseccompError, OSError) as e:
        raise SeccompUnavailable(
            f"isolated jobs need libseccomp for their system call filter: {e}"
            " (Debian: apt install libseccomp2); or turn isolation off"
            " (development only)"
        ) from None
