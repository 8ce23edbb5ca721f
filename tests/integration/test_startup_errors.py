"""
Start-up failures found once the service starts (its port is bound and
its database opened then, after the options and files are checked): one
line on stderr and a non-zero exit, from ``twistd -n jobworker`` and from
``jobworker`` alike.
A missing or unsafe launch helper is tested on an installed copy, in
``test_packaging``.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobworker.jobs import schema
from jobworker.jobs.datadir import DATABASE
from jobworker.pki import write_dev_pki
from tests.helpers.startup import one_line_failure, server_options

BIN = Path(sys.executable).parent
COMMANDS = {
    "twistd": [str(BIN / "twistd"), "--pidfile=", "-n", "jobworker"],
    "jobworker": [str(BIN / "jobworker")],
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    write_dev_pki(directory)
    return directory


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_from_a_newer_version_is_one_line(
    certs: Path, tmp_path: Path, command: str
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    db = sqlite3.connect(data / DATABASE)
    db.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    db.close()
    line = one_line_failure(COMMANDS[command] + server_options(certs, data))
    assert f"is at schema version {schema.VERSION + 1}" in line
    assert str(data / DATABASE) in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_no_database_is_one_line(
    certs: Path, tmp_path: Path, command: str
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / DATABASE).write_bytes(b"not SQLite " * 1000)
    (data / DATABASE).chmod(0o600)
    line = one_line_failure(COMMANDS[command] + server_options(certs, data))
    assert f"cannot open the job database {data / DATABASE}" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_port_in_use_is_one_line(certs: Path, tmp_path: Path, command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = COMMANDS[command] + server_options(certs, tmp_path / "data")
        argv[argv.index("--port") + 1] = port
        line = one_line_failure(argv)
    assert f"Couldn't listen on 127.0.0.1:{port}" in line


def test_the_command_is_twistd_jobworker(certs: Path, tmp_path: Path) -> None:
    """`jobworker` takes the plugin's options: its --help is the plugin's."""
    result = subprocess.run(
        [*COMMANDS["jobworker"], "--help"], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert b"--default-memory=" in result.stdout
    assert b"--cert=" in result.stdout


@pytest.mark.root
@pytest.mark.parametrize("command", COMMANDS)
def test_no_isolation_as_root_without_saying_so_is_one_line(
    certs: Path, tmp_path: Path, command: str
) -> None:
    """An operator's --no-isolation on a root server, thinking it the
    development switch it is elsewhere: refused in one line, nothing made."""
    data = tmp_path / "data"
    argv = [*COMMANDS[command], *server_options(certs, data), "--no-isolation"]
    line = one_line_failure(argv)
    assert "--allow-unisolated-jobs-as-root" in line
    assert "PID namespace, /tmp, /dev and network" in line
    assert not data.exists()
