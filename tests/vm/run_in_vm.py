"""
Run one command as root in a small VM whose cgroup hierarchy is v2 only.

The host may offer cgroup v2 without controllers (its controllers bound to v1
hierarchies); a VM booted with ``cgroup_no_v1=all`` has cpu, io, memory and
pids on cgroup2. The VM is Debian's stock kernel under QEMU's TCG emulator (no
KVM needed) with a tiny initramfs whose ``/init`` (``init.c``) mounts the
host's ``/`` read-only over 9p and runs the command in it, so the guest sees
this checkout, its virtualenv and the host's tools at the same paths. A
second, writable 9p share carries the command in and its exit status out; the
serial console (the command's stdout and stderr, the kernel's messages) goes
to a log file as it is written. A small ext4 disk made on the host is the
guest's ``/dev/vda``, mounted as its temporary directory: IO limits need a
real block device under the files the tests write.

Everything downloaded or built lives in ``.cache/vm/`` of the checkout.
Nothing here needs more than the standard library::

    python3 tests/vm/run_in_vm.py prepare     # fetch the kernel, build /init
    python3 tests/vm/run_in_vm.py run -- /bin/sh -c 'cat /proc/cmdline'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
CACHE = CHECKOUT / ".cache" / "vm"
KERNEL_DIR = CACHE / "kernel"
INIT_SOURCE = Path(__file__).with_name("init.c")
INIT_BINARY = CACHE / "init"
QEMU = "qemu-system-x86_64"

# Debian's metapackage for its current stock kernel; it depends on the package
# that holds the kernel image and modules.
KERNEL_METAPACKAGE = "linux-image-amd64"
# What /init loads (with their dependencies), in this order: virtio over PCI,
# 9p over virtio, the virtio disk, ext4 for it. ext4 finds its checksum
# algorithm through the crypto API, which would ask a modprobe the
# initramfs does not have: load it first.
WANTED_MODULES = (
    "virtio_pci", "9pnet_virtio", "9p", "virtio_blk", "crc32c_generic", "ext4",
)  # fmt: skip
# cgroup_no_v1=all leaves every controller to cgroup2; panic=-1 with QEMU's
# -no-reboot turns a crash of /init into the VM's end instead of a hang.
KERNEL_ARGS = "console=ttyS0 cgroup_no_v1=all panic=-1 quiet loglevel=4 mitigations=off"
DISK_MIB = 256  # sparse: costs the host what the guest writes
MEMORY_MIB = 1536
DEFAULT_TIMEOUT = 180.0

# The guest's root is the host's, read-only. The first of these that holds
# nothing the command needs from the host (a checkout under /tmp, say) gets
# the scratch disk, the others a tmpfs each.
SCRATCH_CANDIDATES = ("/tmp", "/var/tmp", "/run")
# The base of the command's environment; TMPDIR and HOME default to the
# scratch disk.
BASE_GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class VMError(Exception):
    """The VM could not be prepared or did not run the command to its end."""


class VMUnavailable(VMError):
    """This host cannot run the VM at all (no QEMU, no way to get a kernel)."""


@dataclass(frozen=True)
class VMResult:
    """How the guest's command ended, and what the console showed."""

    status: int  # its exit code, or 128 + the signal that ended it
    console: str
    started: float  # seconds from the guest's boot to the command's start
    ended: float  # seconds from the guest's boot to the command's end
    wall: float  # seconds from starting QEMU to its exit


# -- the kernel ---------------------------------------------------------------


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except FileNotFoundError as e:
        raise VMError(
            f"{argv[0]} is not installed (scripts/vm-deps installs it)"
        ) from e
    if done.returncode != 0:
        raise VMError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def kernel_package() -> str:
    """Name the package holding the image and modules of Debian's kernel."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise VMError(f"apt-cache knows no kernel behind {KERNEL_METAPACKAGE}")


def modinfo_depends(module: bytes) -> list[str]:
    """Read the ``depends=`` entry of a kernel module's ``.modinfo`` section.

    Parsed from the ELF file itself, so that no kmod tools are needed and a
    package's missing modules.dep (depmod makes it at install) does not matter.
    """
    if module[:6] != b"\x7fELF\x02\x01":
        raise VMError("kernel module is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", module, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from(
            "<IIQQQQ", module, shoff + index * shentsize
        )
        return name, offset, size

    _, names, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if module[names + name : module.index(b"\0", names + name)] == b".modinfo":
            for entry in module[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[8:].decode().split(",") if d]
            return []
    raise VMError("kernel module has no .modinfo section")


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if not path.name.endswith(".ko"):
        raise VMError(f"cannot read compressed kernel module {path}")
    return data


def load_order(modules: Path, wanted: Sequence[str]) -> list[tuple[str, bytes]]:
    """Wanted modules and all they depend on, each after its dependencies."""
    index = {_module_name(p): p for p in modules.rglob("*.ko*")}
    builtin = {
        _module_name(Path(line))
        for line in (modules / "modules.builtin").read_text().split()
    }
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in index:
            raise VMError(f"kernel module {name} is not in the kernel package")
        data = _read_module(index[name])
        for dependency in modinfo_depends(data):
            visit(dependency.replace("-", "_"))
        order.append((name, data))

    for name in wanted:
        visit(name)
    return order


def _kernel_stamp(package: str) -> str:
    """What the cache was made from: the package, then the modules chosen."""
    return f"{package}\n{' '.join(WANTED_MODULES)}\n"


def kernel_ready() -> bool:
    """Whether the cache holds a kernel with the modules this file wants."""
    stamp = KERNEL_DIR / "stamp"
    if not stamp.exists():
        return False
    package = stamp.read_text().split("\n", 1)[0]
    return stamp.read_text() == _kernel_stamp(package)


def prepare_kernel() -> Path:
    """Download and unpack Debian's kernel, keeping only what the VM loads.

    Leaves ``vmlinuz`` and ``modules/NN-name.ko`` (decompressed, numbered in
    load order) in ``.cache/vm/kernel``; a second call does nothing.
    """
    if kernel_ready():
        return KERNEL_DIR
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise VMUnavailable("no apt-get and dpkg-deb to fetch Debian's kernel with")
    package = kernel_package()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="unpack-") as tmp:
        work = Path(tmp)
        _run(["apt-get", "download", package], cwd=work)
        (deb,) = work.glob("*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(work / "root")])
        _install_kernel(package, work / "root", work / "kernel")
        shutil.rmtree(KERNEL_DIR, ignore_errors=True)
        (work / "kernel").rename(KERNEL_DIR)
    return KERNEL_DIR


def _install_kernel(package: str, root: Path, dest: Path) -> None:
    (vmlinuz,) = (root / "boot").glob("vmlinuz-*")
    (modules,) = (root / "lib" / "modules").iterdir()
    (dest / "modules").mkdir(parents=True)
    shutil.copyfile(vmlinuz, dest / "vmlinuz")
    for number, (name, data) in enumerate(load_order(modules, WANTED_MODULES)):
        (dest / "modules" / f"{number:02d}-{name}.ko").write_bytes(data)
    (dest / "stamp").write_text(_kernel_stamp(package))


# -- /init and the initramfs ---------------------------------------------------


def build_init() -> Path:
    """Compile init.c statically (the initramfs has no libc), if out of date."""
    if (
        INIT_BINARY.exists()
        and INIT_BINARY.stat().st_mtime >= INIT_SOURCE.stat().st_mtime
    ):
        return INIT_BINARY
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise VMError("no C compiler (cc) to build the VM's /init with")
    tmp = INIT_BINARY.with_suffix(".tmp")
    cflags = ["-static", "-Os", "-Wall", "-Wextra", "-Werror"]
    _run([cc, *cflags, "-o", str(tmp), str(INIT_SOURCE)])
    tmp.replace(INIT_BINARY)
    return INIT_BINARY


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: int = 0) -> bytes:
    """One member of a cpio archive in the "newc" format the kernel reads."""
    fields = (1, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev))
    encoded = name.encode() + b"\0"
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    header += b"%08X%08X" % (len(encoded), 0) + encoded
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


def _initramfs_members(init: Path, kernel: Path) -> Iterator[bytes]:
    for directory in ("dev", "modules", "newroot", "xfer"):
        yield _cpio_entry(directory, 0o040755)
    # The kernel opens /dev/console for /init's stdio before /init runs.
    yield _cpio_entry("dev/console", 0o020600, rdev=os.makedev(5, 1))
    yield _cpio_entry("init", 0o100755, init.read_bytes())
    for module in sorted((kernel / "modules").iterdir()):
        yield _cpio_entry(f"modules/{module.name}", 0o100644, module.read_bytes())
    yield _cpio_entry("TRAILER!!!", 0)


def write_initramfs(dest: Path, init: Path, kernel: Path) -> None:
    with dest.open("wb") as out:
        for member in _initramfs_members(init, kernel):
            out.write(member)


@contextlib.contextmanager
def _cache_locked() -> Iterator[None]:
    """Hold the cache for this process: test runs of one checkout may overlap."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare() -> Path:
    """Make sure QEMU, the kernel and /init are there; return the kernel dir."""
    if shutil.which(QEMU) is None:
        raise VMUnavailable(f"{QEMU} is not installed (scripts/vm-deps installs it)")
    with _cache_locked():
        kernel = prepare_kernel()
        build_init()
    return kernel


# -- running ------------------------------------------------------------------


def _opt(path: Path) -> str:
    """A path as a QEMU option value, where a comma must be doubled."""
    return str(path).replace(",", ",,")


def qemu_command(
    kernel: Path, initramfs: Path, xfer: Path, disk: Path, console: Path
) -> list[str]:
    return [
        QEMU, "-nodefaults", "-no-user-config", "-no-reboot",
        "-machine", "pc", "-accel", "tcg", "-smp", "2", "-m", str(MEMORY_MIB),
        "-display", "none", "-nic", "none",
        "-kernel", _opt(kernel / "vmlinuz"), "-initrd", _opt(initramfs),
        "-append", KERNEL_ARGS,
        "-chardev", f"file,id=console,path={_opt(console)}",
        "-serial", "chardev:console",
        # The host's / read-only; several file systems are mounted under it, so
        # remap their inode numbers to keep them unique in the guest.
        "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,"
        "readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=xfer,path={_opt(xfer)},security_model=none",
        "-device", "virtio-9p-pci,fsdev=xfer,mount_tag=xfer",
        "-drive", f"file={_opt(disk)},if=virtio,format=raw",
    ]  # fmt: skip


def scratch_dirs(needed: Sequence[str]) -> list[str]:
    """The scratch directories that hide none of the needed host paths."""

    def hides(directory: str, path: str) -> bool:
        return any(
            p.is_relative_to(directory) for p in (Path(path), Path(path).resolve())
        )

    candidates = (d for d in SCRATCH_CANDIDATES if Path(d).is_dir())
    chosen = [d for d in candidates if not any(hides(d, p) for p in needed)]
    if not chosen:
        raise VMError(f"each of {', '.join(SCRATCH_CANDIDATES)} holds {needed}")
    return chosen


def _strings(items: Sequence[str]) -> bytes:
    return b"".join(item.encode() + b"\0" for item in items)


def _write_request(
    xfer: Path, argv: Sequence[str], env: Mapping[str, str], cwd: str
) -> None:
    disk, *scratch = scratch_dirs([argv[0], cwd, str(CHECKOUT)])
    env = {"TMPDIR": disk, "HOME": disk, **env}
    (xfer / "argv").write_bytes(_strings(argv))
    (xfer / "env").write_bytes(_strings([f"{k}={v}" for k, v in env.items()]))
    (xfer / "scratch").write_bytes(_strings(scratch))
    (xfer / "disk").write_text(disk)
    (xfer / "cwd").write_text(cwd)


def make_disk(path: Path) -> None:
    """An empty ext4 file system, without a journal (nothing to recover)."""
    with path.open("wb") as f:
        f.truncate(DISK_MIB << 20)
    options = ["-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "root_owner=0:0"]
    _run(["mkfs.ext4", *options, str(path)])


def _read_status(xfer: Path, console: str) -> tuple[int, float, float]:
    path = xfer / "status"
    if not path.exists():
        raise VMError(
            f"the VM ended without running the command to its end:\n{console}"
        )
    fields = dict(line.split(" ", 1) for line in path.read_text().splitlines())
    if "init-error" in fields:
        raise VMError(f"the VM's /init failed: {fields['init-error']}\n{console}")
    code = int(fields["exit"]) if "exit" in fields else 128 + int(fields["signal"])
    return code, float(fields["started"]), float(fields["ended"])


def _boot(command: list[str], timeout: float, qemu_log: Path) -> float:
    """Run QEMU to its end; return the seconds it took."""
    start = time.monotonic()
    with qemu_log.open("wb") as log:
        qemu = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            code = qemu.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(f"the VM did not power off within {timeout:.0f} s") from None
        finally:
            # Also when interrupted (Ctrl-C, a test runner's own timeout):
            # no VM outlives its run.
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
    if code != 0:
        raise VMError(f"{QEMU} exited with {code}: {qemu_log.read_text().strip()}")
    return time.monotonic() - start


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str = "/",
    timeout: float = DEFAULT_TIMEOUT,
    console_log: Path | None = None,
) -> VMResult:
    """Boot the VM, run argv as root in it, and return how it ended.

    argv[0] is a path (absolute, or relative to cwd): no PATH search.
    env is the command's environment (default ``BASE_GUEST_ENV``; TMPDIR and
    HOME default to the scratch disk's mount point). The serial console is
    written to console_log as it comes (default: a temporary file) and
    returned in the result. Raises ``VMError`` if the VM could not run the
    command to its end within timeout seconds.
    """
    kernel = prepare()
    with tempfile.TemporaryDirectory(prefix="jobworker-vm-") as tmp:
        work = Path(tmp)
        xfer, initramfs, disk = work / "xfer", work / "initramfs", work / "disk.img"
        xfer.mkdir()
        _write_request(xfer, argv, BASE_GUEST_ENV if env is None else env, cwd)
        write_initramfs(initramfs, INIT_BINARY, kernel)
        make_disk(disk)
        log = console_log or work / "console.log"
        command = qemu_command(kernel, initramfs, xfer, disk, log)
        try:
            wall = _boot(command, timeout, work / "qemu.log")
        finally:
            console = log.read_text(errors="replace") if log.exists() else ""
        status, started, ended = _read_status(xfer, console)
    return VMResult(status, console, started, ended, wall)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="install nothing; fetch the kernel, build /init")
    runner = sub.add_parser("run", help="run a command in the VM, exit with its status")
    runner.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    runner.add_argument("--cwd", default=str(CHECKOUT))
    runner.add_argument("--log", type=Path, help="write the serial console here")
    runner.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    runner.add_argument("command", nargs="+")
    options = parser.parse_args(args)
    try:
        if options.action == "prepare":
            print(prepare())
            return 0
        env = BASE_GUEST_ENV | dict(e.split("=", 1) for e in options.env)
        result = run(options.command, env=env, cwd=options.cwd,
                     timeout=options.timeout, console_log=options.log)  # fmt: skip
    except VMError as e:
        print(f"run_in_vm: {e}", file=sys.stderr)
        return 2 if isinstance(e, VMUnavailable) else 1
    sys.stdout.write(result.console)
    print(
        f"run_in_vm: status {result.status}; command ran from {result.started:.1f} s "
        f"to {result.ended:.1f} s after boot; {result.wall:.1f} s in all",
        file=sys.stderr,
    )
    return result.status


if __name__ == "__main__":
    sys.exit(main())
