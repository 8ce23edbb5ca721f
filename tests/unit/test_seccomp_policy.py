"""
The isolated jobs' system call policy, as a table and as a program.

The table: every name is one libseccomp knows, nothing is both allowed and
refused, the refusals say what they fail with. The program: what libseccomp
compiled from it, run here by a small BPF interpreter on made-up calls, so
each rule's verdict is checked without loading anything into the kernel.
"""

from __future__ import annotations

import errno
import struct

import pytest

from jobworker.linux import seccomp
from jobworker.linux.libseccomp import (
    ACT_ALLOW,
    ACT_KILL_PROCESS,
    NR_UNKNOWN,
    Libseccomp,
    LibseccompError,
    act_errno,
)
from jobworker.linux.seccomp import (
    ALLOWED,
    CONDITIONAL,
    DENIED,
    TRACING,
    Rule,
    compile_program,
    job_rules,
    kernel_version,
)

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000
CONDITIONAL_NAMES = {rule.syscall for rule in CONDITIONAL}
EVERY_ALLOWED = ALLOWED | TRACING | CONDITIONAL_NAMES
# What the kernel surface must not offer a job, whatever else changes.
MUST_FAIL_NAMES = """
    mount umount2 pivot_root move_mount open_tree fsopen fsmount fsconfig
    fspick mount_setattr keyctl add_key request_key bpf perf_event_open
    userfaultfd io_uring_setup io_uring_enter io_uring_register init_module
    finit_module delete_module kexec_load kexec_file_load open_by_handle_at
    name_to_handle_at setns reboot swapon swapoff acct settimeofday
    clock_settime adjtimex syslog quotactl lookup_dcookie vm86 nfsservctl
    iopl ioperm
"""
MUST_FAIL = MUST_FAIL_NAMES.split()


@pytest.fixture(scope="module")
def lib() -> Libseccomp:
    return Libseccomp()


@pytest.fixture(scope="module")
def program() -> bytes:
    return compile_program(job_rules(kernel=(6, 1)))


# The table


@pytest.mark.parametrize("name", sorted(EVERY_ALLOWED))
def test_every_allowed_name_is_a_native_system_call(lib: Libseccomp, name: str) -> None:
    """An allowed name is an x86_64 system call: a typo would allow nothing."""
    assert lib.resolve(name) >= 0


@pytest.mark.parametrize("name", sorted(DENIED))
def test_every_denied_name_is_a_system_call(lib: Libseccomp, name: str) -> None:
    """A refused name is one libseccomp knows (vm86 is i386's alone)."""
    assert lib.resolve(name) != NR_UNKNOWN


def test_no_name_is_both_allowed_and_denied() -> None:
    assert not EVERY_ALLOWED & set(DENIED)
    assert not ALLOWED & (TRACING | CONDITIONAL_NAMES)


def test_clone3_is_enosys_and_every_other_refusal_eperm() -> None:
    """glibc falls back from clone3 to clone on ENOSYS alone."""
    assert DENIED["clone3"] == errno.ENOSYS
    assert {n for n, e in DENIED.items() if e != errno.EPERM} == {"clone3"}
    assert seccomp.DEFAULT_ERRNO == errno.EPERM


@pytest.mark.parametrize("name", MUST_FAIL)
def test_the_kernels_doors_are_refused(name: str) -> None:
    assert DENIED[name] == errno.EPERM


def test_tracing_only_where_the_kernel_rechecks_after_a_tracer() -> None:
    """ptrace from Linux 4.8 on, where a tracer cannot get past the filter."""
    assert {r.syscall for r in job_rules(kernel=(4, 8))} >= TRACING
    assert not {r.syscall for r in job_rules(kernel=(4, 7))} & TRACING


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.18.44-fc-v1147", (6, 18)),
        ("4.8.0", (4, 8)),
        ("5.10", (5, 10)),
        ("x", (0, 0)),
    ],
)
def test_kernel_version(release: str, version: tuple[int, int]) -> None:
    assert kernel_version(release) == version


def test_an_unknown_name_is_an_error() -> None:
    with pytest.raises(LibseccompError, match="not a system call here: nosuch"):
        compile_program([Rule("nosuch")])


def test_a_missing_library_is_an_error() -> None:
    with pytest.raises(LibseccompError, match=r"cannot load libnosuch\.so\.0"):
        Libseccomp("libnosuch.so.0")


# The program


def run_bpf(program: bytes, nr: int, *args: int, arch: int = AUDIT_ARCH_X86_64) -> int:
    """The verdict of classic BPF ``program`` on a call (struct seccomp_data)."""
    padded = [*args, *[0] * (6 - len(args))]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(a & (2**64 - 1) for a in padded))
    code = [
        struct.unpack_from("<HBBI", program, at) for at in range(0, len(program), 8)
    ]
    a = x = pc = 0
    memory = [0] * 16
    while True:
        op, jt, jf, k = code[pc]
        pc += 1
        if op == 0x20:  # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif op in (0x00, 0x01):  # ld #k, ldx #k
            a, x = (k, x) if op == 0x00 else (a, k)
        elif op in (0x60, 0x61):  # ld M[k], ldx M[k]
            a, x = (memory[k], x) if op == 0x60 else (a, memory[k])
        elif op in (0x02, 0x03):  # st M[k], stx M[k]
            memory[k] = a if op == 0x02 else x
        elif op == 0x54:  # and #k
            a &= k
        elif op == 0x05:  # ja k
            pc += k
        elif op in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset #k
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}
            pc += jt if taken[op] else jf
        elif op == 0x06:  # ret #k
            return int(k)
        else:
            raise AssertionError(f"instruction {op:#x} not interpreted here")


def number(name: str) -> int:
    return Libseccomp().resolve(name)


EPERM = act_errno(errno.EPERM)
THREAD_FLAGS = 0x3D0F00  # glibc's pthread_create: VM FS FILES SIGHAND ...


def test_program_fits_the_kernels_limit(program: bytes) -> None:
    assert len(program) % 8 == 0
    assert 0 < len(program) // 8 < 4096  # BPF_MAXINSNS


@pytest.mark.parametrize(
    ("name", "args", "verdict"),
    [
        ("read", (), ACT_ALLOW),
        ("execve", (), ACT_ALLOW),
        ("ptrace", (), ACT_ALLOW),
        ("mount", (), EPERM),
        ("keyctl", (), EPERM),
        ("io_uring_setup", (), EPERM),
        ("clone3", (), act_errno(errno.ENOSYS)),
        ("clone", (THREAD_FLAGS,), ACT_ALLOW),
        ("clone", (0x11,), ACT_ALLOW),  # fork: SIGCHLD
        ("clone", (THREAD_FLAGS | seccomp.CLONE_NEWUSER,), EPERM),
        ("clone", (0x11 | seccomp.CLONE_NEWNET,), EPERM),
        ("clone", (0x11 | 1 << 32,), ACT_ALLOW),  # the high half is not a flag
        ("unshare", (0x200,), ACT_ALLOW),  # CLONE_FS
        ("unshare", (seccomp.CLONE_NEWUSER,), EPERM),
        ("unshare", (seccomp.CLONE_NEWNS,), EPERM),
        ("unshare", (seccomp.CLONE_NEWTIME,), EPERM),
        ("socket", (1, 1, 0), ACT_ALLOW),  # AF_UNIX
        ("socket", (2, 2, 17), ACT_ALLOW),  # AF_INET, UDP
        ("socket", (10, 1, 0), ACT_ALLOW),  # AF_INET6
        ("socket", (16, 3, 0), ACT_ALLOW),  # AF_NETLINK, NETLINK_ROUTE
        ("socket", (16, 3, 4), ACT_ALLOW),  # AF_NETLINK, NETLINK_SOCK_DIAG
        ("socket", (16, 3, 9), EPERM),  # NETLINK_AUDIT
        ("socket", (16, 3, 12), EPERM),  # NETLINK_NETFILTER
        ("socket", (17, 3, 0), EPERM),  # AF_PACKET
        ("socket", (40, 1, 0), EPERM),  # AF_VSOCK
        ("socket", (1 | 1 << 32, 1, 0), EPERM),  # not AF_UNIX, as 64 bits
        ("socketpair", (1, 1, 0), ACT_ALLOW),
        ("socketpair", (30, 5, 0), EPERM),  # AF_TIPC
        ("personality", (0xFFFFFFFF,), ACT_ALLOW),
        ("personality", (0x40000,), ACT_ALLOW),
        ("personality", (0x0400000,), EPERM),  # READ_IMPLIES_EXEC
        ("personality", (0x0100000,), EPERM),  # MMAP_PAGE_ZERO
    ],
)
def test_program_verdicts(
    program: bytes, name: str, args: tuple[int, ...], verdict: int
) -> None:
    assert run_bpf(program, number(name), *args) == verdict


def test_a_call_no_rule_names_fails_with_eperm(program: bytes) -> None:
    assert run_bpf(program, 9999) == EPERM


def test_other_abis_kill(program: bytes) -> None:
    """An x32 number, or any call of the i386 ABI: the process is killed."""
    assert run_bpf(program, X32_SYSCALL_BIT | 0) == ACT_KILL_PROCESS
    assert run_bpf(program, 20, arch=AUDIT_ARCH_I386) == ACT_KILL_PROCESS
