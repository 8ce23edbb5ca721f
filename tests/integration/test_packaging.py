"""
jobworker as a user gets it: built into a wheel, installed into a fresh
virtualenv outside the checkout with nothing more done, and its server
running a job for its client.

No network: the new virtualenv sees this one's site-packages (Twisted,
pip, setuptools) through a .pth file, which adds that directory without
reading the .pth files in it, so the editable checkout these tests run from
does not leak in. jobworker itself is built from a copy of the checkout
(``--no-build-isolation --no-deps``), so that the build writes nothing into
the checkout.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobworker.pki import write_dev_pki
from tests.helpers.startup import one_line_failure, server_options

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
HELPER = Path("jobworker", "linux", "jobworker-exec")
LISTENING = re.compile(rb"Site \(TLS\) starting on (\d+)")
# The environment of every command: none of this one's paths or pip config.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))},
    "PIP_CONFIG_FILE": os.devnull,
    "PYTHONNOUSERSITE": "1",
}


@dataclass(frozen=True)
class Installed:
    venv: Path
    site: Path
    wheel: Path

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name

    def command(self, name: str) -> list[str]:
        """The server's command line, as twistd or as jobworker."""
        if name == "twistd":
            return [str(self.bin("twistd")), "--pidfile=", "-n", "jobworker"]
        return [str(self.bin("jobworker"))]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory)
    return directory


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    top = tmp_path_factory.mktemp("packaging")
    source = copy_checkout(top / "source")
    venv = top / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=top)
    python = venv / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_path('platlib'))"
    site = Path(run(python, "-c", where, cwd=top))
    ours = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    (site / "this-environment.pth").write_text("".join(f"{p}\n" for p in ours))
    pip = [python, "-m", "pip", "--no-input", "--disable-pip-version-check"]
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    run(*pip, "wheel", *offline, "--wheel-dir", top / "wheels", source, cwd=top)
    run(*pip, "install", *offline, source, cwd=top)
    write_twistd(venv)
    [wheel] = (top / "wheels").glob("jobworker-*.whl")
    return Installed(venv, site, wheel)


def run(*argv: object, cwd: Path) -> str:
    """Run ``argv`` in ``cwd``: never the checkout, whose modules ``python -c``
    and ``-m`` would import first."""
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, env=ENV, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    return result.stdout.decode().strip()


def copy_checkout(target: Path) -> Path:
    """The checkout's files (tracked, and new ones not ignored), copied."""
    listed = run(
        "git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
        "--exclude-standard", cwd=ROOT,
    )  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def write_twistd(venv: Path) -> None:
    """The ``twistd`` pip writes for Twisted, which is this environment's."""
    script = venv / "bin" / "twistd"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import sys\n"
        "from twisted.scripts.twistd import run\n"
        "sys.exit(run())\n"
    )
    script.chmod(0o755)


def test_the_wheel_carries_the_built_helper(installed: Installed) -> None:
    """The wheel holds the compiled, executable helper, and says its platform."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        info = wheel.getinfo(str(HELPER))
        assert (info.external_attr >> 16) & 0o111 == 0o111
        assert wheel.read(info).startswith(b"\x7fELF")
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL")]
        assert "Root-Is-Purelib: false" in wheel.read(metadata).decode()
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert installed.wheel.name.endswith(f"-py3-none-{platform}.whl")


def test_the_wheel_carries_every_module(installed: Installed) -> None:
    """Every module and data file of the package is in the wheel: a package
    left out of setup.cfg's list would be missing only once installed."""
    tracked = run("git", "-C", ROOT, "ls-files", "-z", "jobworker", cwd=ROOT)
    wanted = {
        name
        for name in tracked.split("\0")
        if name.endswith((".py", ".c", ".json", ".typed"))
    }
    with zipfile.ZipFile(installed.wheel) as wheel:
        assert wanted - set(wheel.namelist()) == set()


def test_the_install_is_the_new_environments_own(
    installed: Installed, tmp_path: Path
) -> None:
    """jobworker and its helper come from the new virtualenv, not the checkout."""
    where = run(
        installed.bin("python"), "-c",
        "import jobworker, jobworker.tap, jobworker.linux.build as b;"
        " print(*jobworker.__path__, jobworker.tap.__file__, b.helper_path())",
        cwd=tmp_path,
    ).split()  # fmt: skip
    assert len(where) == 3, where
    for path in where:
        assert Path(path).is_relative_to(installed.venv), where
    assert os.access(installed.site / HELPER, os.X_OK)


@pytest.mark.parametrize("command", ["twistd", "jobworker"])
def test_the_installed_server_runs_a_job(
    installed: Installed, certs: Path, tmp_path: Path, command: str
) -> None:
    """pip install, then start the server: it runs a job, nothing else done."""
    argv = installed.command(command) + server_options(certs, tmp_path / "data")
    with serving(argv, cwd=tmp_path) as url:
        result = subprocess.run(
            [installed.bin("jobworker-client"), "--server", url,
             "--ca", certs / "ca.pem", "--cert", certs / "alice.pem",
             "--key", certs / "alice.key", "run", "--", "/bin/echo", "hi"],
            capture_output=True, env=ENV, cwd=tmp_path, timeout=60,
        )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr


@pytest.mark.parametrize("command", ["twistd", "jobworker"])
def test_a_missing_helper_is_one_line(
    installed: Installed, certs: Path, tmp_path: Path, command: str
) -> None:
    helper = installed.site / HELPER
    helper.rename(helper.with_suffix(".away"))
    try:
        argv = installed.command(command) + server_options(certs, tmp_path / "data")
        line = one_line_failure(argv, cwd=tmp_path)
    finally:
        helper.with_suffix(".away").rename(helper)
    assert f"the job launch helper {helper} is not built" in line


@pytest.mark.root
@pytest.mark.parametrize("command", ["twistd", "jobworker"])
def test_a_helper_others_could_change_is_one_line(
    installed: Installed, certs: Path, tmp_path: Path, command: str
) -> None:
    """A root server will not run a helper its group may write."""
    helper = installed.site / HELPER
    helper.chmod(0o775)
    try:
        argv = installed.command(command) + server_options(certs, tmp_path / "data")
        line = one_line_failure(argv, cwd=tmp_path)
    finally:
        helper.chmod(0o755)
    assert "is not safe to run as root: it is writable by its group" in line


@contextmanager
def serving(argv: list[str], cwd: Path) -> Iterator[str]:
    """The server ``argv`` starts, up on the port it logs: its URL."""
    server = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=cwd
    )
    try:
        yield f"https://127.0.0.1:{listening_port(server)}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()


def listening_port(server: subprocess.Popen[bytes]) -> int:
    """The port the server chose (``--port 0``), from its log."""
    assert server.stdout is not None
    log = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 0.5)
        if not ready:
            continue
        line = server.stdout.readline()
        if not line:
            break  # exited
        log += line
        found = LISTENING.search(line)
        if found:
            return int(found.group(1))
    pytest.fail(f"the server did not come up:\n{log.decode()}")
