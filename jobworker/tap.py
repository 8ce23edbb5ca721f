"""
``twistd jobworker``: command-line options and the service they make.

A start-up failure (a bad certificate, key or policy file, a missing or
unsafe launch helper, a database from a newer version, a port in use,
``--no-isolation`` as root without ``--allow-unisolated-jobs-as-root``) is
one clear line on stderr and a non-zero exit, not a traceback. SIGTERM
(twistd's stop) stops listening first, then stops every job with its grace
period, answers open long-polls and closes the database.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sqlite3
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from twisted.application.internet import SSLServer
from twisted.application.service import IService, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from jobworker.auth import Policy, PolicyError
from jobworker.auth.host_check import check_on_host
from jobworker.http.settings import ApiSettings
from jobworker.http.site import Api
from jobworker.jobs.datadir import UnsafeDataDirectory, prepare_data_directory
from jobworker.jobs.errors import IsolationUnavailable, UnisolatedAsRoot
from jobworker.jobs.schema import SchemaTooNew
from jobworker.jobs.service import JobManager, Settings
from jobworker.jobs.spec import InvalidSpec, IOLimits, Limits, parse_size, show_size
from jobworker.jobs.store import StoreUnavailable
from jobworker.linux.build import HelperMissing, UnsafeHelper, helper_path
from jobworker.linux.launcher import DEFAULT_JOB_PATH, DEFAULT_TMPFS_SIZE, UnknownUser
from jobworker.linux.seccomp import SeccompUnavailable
from jobworker.linux.uids import (
    InvalidUidRange,
    UidRange,
    UnsafeUidDirectory,
    host_ids,
)
from jobworker.masks import masked_paths
from jobworker.tls import TLSConfigError, server_tls_options

log = Logger()
HTTP = ApiSettings()

# fmt: off
PARAMETERS = [
    ["host", None, "127.0.0.1", "Address to listen on."],
    ["port", "p", 8443, "Port to listen on.", int],
    ["cert", None, None, "Server certificate (PEM)."],
    ["key", None, None, "Server private key (PEM)."],
    ["ca", None, None, "CA certificate that signs client certificates (PEM)."],
    ["policy", None, None, "Policy file (TOML). Without one, all are denied."],
    ["data-dir", "d", "data", "Directory for the job database and output."],
    ["max-jobs", None, 256, "Most jobs running at once.", int],
    ["output-limit", None, "10G", "Most output per job; beyond, it is stopped."],
    ["grace", None, 10.0, "Seconds from SIGTERM to SIGKILL on stop.", float],
    ["job-path", None, DEFAULT_JOB_PATH, "PATH of a job that sets none."],
    ["tmpfs-size", None, show_size(DEFAULT_TMPFS_SIZE),
     "Size of each of a job's private /tmp, /var/tmp, /run, /dev/shm"
     " (a role's tmpfs key overrides it)."],
    ["job-uid-range", None, str(UidRange()),
     "Uids (and gids) of jobs whose role names no run_as, one each; the"
     " default is in what systemd's UIDS-GIDS.md leaves unused: above its"
     " dynamic users, the usual /etc/subuid blocks and its container range."],
    # The HTTP layer's, defaulting to its settings' (jobworker.http.settings).
    ["max-body", None, show_size(HTTP.max_body), "Largest request body."],
    ["idle-timeout", None, HTTP.idle_timeout,
     "Close connections idle this long.", float],
    ["handshake-timeout", None, HTTP.handshake_timeout,
     "Seconds to finish the TLS handshake.", float],
    ["header-timeout", None, HTTP.header_timeout,
     "Seconds to send a request's headers.", float],
    ["body-timeout", None, HTTP.body_timeout,
     "Seconds to send a request's body.", float],
]
TIMEOUTS = ("idle-timeout", "handshake-timeout", "header-timeout", "body-timeout")
# The server's default limits: each for a job that leaves that limit out.
DEFAULT_LIMITS: list[list[Any]] = [
    ["default-cpu", None, None, "Default cpu limit, in CPUs (0.5: half of one)."],
    ["default-memory", None, None, "Default memory limit, such as 512M or 2G."],
    ["default-pids", None, None, "Default pids limit: processes and threads."],
    ["default-read-bps", None, None, "Default disk read limit, bytes a second (20M)."],
    ["default-write-bps", None, None, "Default disk write limit, bytes a second."],
    ["default-read-iops", None, None, "Default disk reads a second."],
    ["default-write-iops", None, None, "Default disk writes a second."],
]
# fmt: on


class Options(usage.Options):
    synopsis = "--cert FILE --key FILE --ca FILE [options]"
    longdesc = (
        "Serve the jobworker HTTPS API over mutual TLS. Clients present "
        "certificates signed by --ca; the policy maps their names to roles. "
        "A job that leaves a limit out gets its --default-*, but never more "
        "than its role's ceiling; without a default, the ceiling."
    )
    optParameters: Any = PARAMETERS + DEFAULT_LIMITS
    optFlags: Any = [
        [
            "no-isolation",
            None,
            "Run jobs without namespaces (development only; no root needed;"
            " as root, only with --allow-unisolated-jobs-as-root).",
        ],
        [
            "allow-unisolated-jobs-as-root",
            None,
            "With --no-isolation, start as root all the same: jobs then share"
            " the host's PID namespace, /tmp, /dev and network, each role's"
            " jobs run as one shared user, and no system call filter applies.",
        ],
    ]

    def postOptions(self) -> None:
        for name in ("cert", "key", "ca"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if self["allow-unisolated-jobs-as-root"] and not self["no-isolation"]:
            raise usage.UsageError(
                "--allow-unisolated-jobs-as-root goes with --no-isolation"
            )
        if not 0 <= self["port"] < 65536:
            raise usage.UsageError("--port must be from 0 to 65535")
        if self["max-jobs"] < 1:
            raise usage.UsageError("--max-jobs must be at least 1")
        for name in TIMEOUTS:
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be more than 0 seconds")
        for name in ("output-limit", "max-body", "tmpfs-size"):
            try:
                self[name] = parse_size(self[name], f"--{name}")
            except InvalidSpec as e:
                raise usage.UsageError(str(e)) from None
        if self["tmpfs-size"] < 1:
            raise usage.UsageError("--tmpfs-size must be at least 1 byte")
        for name, _, _, _ in DEFAULT_LIMITS:
            if self[name] is not None:
                self[name] = _default_limit(name, self[name])


def _default_limit(name: str, value: str) -> float | int:
    """One ``--default-*`` value, or a ``UsageError`` naming the option."""
    option = f"--{name}"
    if name.endswith(("memory", "bps")):
        try:
            return parse_size(value, option)
        except InvalidSpec as e:
            raise usage.UsageError(str(e)) from None
    cpu = name == "default-cpu"
    try:
        number = float(value) if cpu else int(value)
    except ValueError:
        number = 0
    if not 0 < number < math.inf:
        kind = "positive number of CPUs" if cpu else "whole number, 1 or more"
        raise usage.UsageError(f"{option} must be a {kind}")
    return number


def default_limits(options: Options) -> Limits:
    """The ``--default-*`` options: the limits of a job that leaves them out."""
    return Limits(
        cpu=options["default-cpu"],
        memory=options["default-memory"],
        pids=options["default-pids"],
        io=IOLimits(
            read_bps=options["default-read-bps"],
            write_bps=options["default-write-bps"],
            read_iops=options["default-read-iops"],
            write_iops=options["default-write-iops"],
        ),
    )


# What a bad configuration or installation raises, building the service
# tree or starting it: each says what is wrong in one line.
STARTUP_ERRORS = (
    TLSConfigError,
    PolicyError,
    IsolationUnavailable,
    UnisolatedAsRoot,
    SeccompUnavailable,
    UnknownUser,
    InvalidUidRange,
    UnsafeUidDirectory,
    UnsafeDataDirectory,
    HelperMissing,
    UnsafeHelper,
    SchemaTooNew,
    StoreUnavailable,
    sqlite3.Error,
    CannotListenError,
    OSError,
)


def makeService(options: Options) -> IService:
    """Build the service tree, or exit with one line saying what is wrong."""
    try:
        return build_service(options)
    except STARTUP_ERRORS as e:
        exit_saying(e)


class ServerService(MultiService):
    """
    The service tree's root. Its services start after ``makeService``: the
    listener binds its port, the job manager opens its database. What they
    raise then is one line and a non-zero exit too, not twistd's traceback.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except STARTUP_ERRORS as e:
            exit_saying(e)

    def startService(self) -> None:
        try:
            super().startService()
        except STARTUP_ERRORS as e:
            exit_saying(e)


def exit_saying(error: Exception) -> NoReturn:
    """One line on stderr, then exit 1. Once twistd logs, ``sys.stderr``
    goes to the log: the line goes to the process's own stderr."""
    print(f"jobworker: {error}", file=sys.__stderr__ or sys.stderr)
    raise SystemExit(1)


def build_service(options: Options) -> IService:
    isolate = not options["no-isolation"]
    unisolated_root = not isolate and os.geteuid() == 0
    allow_unisolated_root = options["allow-unisolated-jobs-as-root"]
    if unisolated_root and not allow_unisolated_root:
        raise UnisolatedAsRoot(
            "--no-isolation as root: jobs would share the host's PID namespace,"
            " /tmp, /dev and network, with no system call filter; pass"
            " --allow-unisolated-jobs-as-root too if that is meant"
        )
    tls = server_tls_options(options["cert"], options["key"], options["ca"])
    policy = load_policy(options["policy"])
    # Every job is launched through it: refuse now one that is missing, or
    # that a user other than root could change under a root server.
    helper_path()
    if isolate and os.geteuid() != 0:
        raise IsolationUnavailable(
            "isolating jobs needs root: run as root, or pass --no-isolation"
            " (development only: jobs then run unconfined, as this user)"
        )
    # Checked here, not only when the manager opens it, so that an unsafe
    # one is a line on stderr rather than a traceback.
    data_dir = prepare_data_directory(Path(options["data-dir"]))
    masks = masked_paths(options, data_dir)
    policy = check_on_host(policy, options["policy"] or "<policy>", masks)
    manager = JobManager(
        _reactor(),
        data_dir,
        Settings(
            max_running_jobs=options["max-jobs"],
            output_limit=options["output-limit"],
            default_grace=options["grace"],
            job_path=options["job-path"],
            isolate=isolate,
            allow_unisolated_root=allow_unisolated_root,
            default_limits=default_limits(options),
            tmpfs_size=options["tmpfs-size"],
            masked_paths=masks,
            job_uids=job_uid_range(options),
        ),
    )
    # Jobs change users where the server is root, isolated or not: look the
    # users up now (an unknown one is a configuration error), not per job.
    if os.geteuid() == 0:
        manager.prepare_users(
            {role.run_as for role in policy.roles.values() if role.run_as}
        )
    if unisolated_root:
        log.warn(
            "--no-isolation as root: jobs share the host's PID namespace, /tmp,"
            " /dev and network, each role's jobs run as its one run_as user,"
            " and no system call filter applies"
        )
    elif not isolate:
        log.warn("--no-isolation: jobs run without namespaces, as this user")
    raise_open_files_limit()
    api = Api(
        manager,
        policy,
        ApiSettings(
            max_body=options["max-body"],
            idle_timeout=options["idle-timeout"],
            handshake_timeout=options["handshake-timeout"],
            header_timeout=options["header-timeout"],
            body_timeout=options["body-timeout"],
        ),
    )
    top = ServerService()
    GracefulTermination(_reactor()).setServiceParent(top)
    # Children stop in reverse order: the listener goes first, so nothing new
    # arrives while the manager stops the jobs.
    manager.setServiceParent(top)
    server = SSLServer(options["port"], api.site(), tls, interface=options["host"])
    server.setServiceParent(top)
    return top


class GracefulTermination(Service):
    """
    SIGTERM is how a supervisor asks us to stop: stop gracefully and exit 0.

    twistd's own handler stops the reactor too, but then re-raises SIGTERM on
    itself at exit, which reads as a crash to anyone checking the status.
    The handler is installed once the reactor runs, after twistd's own.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, number: int, frame: FrameType | None) -> None:
        log.info("received SIGTERM: stopping jobs, then exiting")
        self._reactor.callFromThread(self._reactor.stop)


def job_uid_range(options: Options) -> UidRange:
    """``--job-uid-range``; a warning for the host's ids in it, then skipped."""
    try:
        uids = UidRange.parse(options["job-uid-range"])
    except InvalidUidRange as e:
        raise InvalidUidRange(f"--job-uid-range {e}") from None
    taken = sorted(i for i in host_ids() if i in uids)
    if taken:
        log.warn(
            "--job-uid-range {uids}: /etc/passwd or /etc/group name {count} of"
            " its ids ({some}); jobs never get those",
            uids=uids,
            count=len(taken),
            some=", ".join(map(str, taken[:5])),
        )
    return uids


def load_policy(path: str | None) -> Policy:
    if path is None:
        log.warn("no --policy given: every identity is denied")
        return Policy.default()
    return Policy.from_toml(Path(path))


def raise_open_files_limit() -> None:
    """
    Each job holds pipes and files, each client a socket: allow many. Where
    the limit cannot be raised the server still runs; at the limit, Twisted
    closes the connections it cannot accept and logs it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        log.info("the open files limit is {soft}, the hard limit", soft=soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        # e.g. a hard limit of "unlimited", which the kernel caps lower.
        log.warn(
            "could not raise the open files limit from {soft} to {hard}: {error}",
            soft=soft,
            hard=hard,
            error=e,
        )
        return
    log.info("raised the open files limit from {soft} to {hard}", soft=soft, hard=hard)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
