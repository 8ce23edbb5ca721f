"""Parsing ``/proc/PID/stat`` lines, whatever a process named itself."""

from __future__ import annotations

import pytest

from jobworker.linux.proc import ProcStat, parse_stat


def stat_line(pid: int, name: bytes, session: int, start_time: int) -> bytes:
    """A stat line as Linux 6 writes it: 52 fields, ``name`` in parentheses."""
    after_name = [b"S", b"1", str(pid).encode(), str(session).encode()]
    after_name += [b"0"] * 15 + [str(start_time).encode()] + [b"0"] * 29
    return b"%d (%s) %s\n" % (pid, name, b" ".join(after_name))


def test_plain_name() -> None:
    """The session is field 6 and the start time field 22, as proc(5) counts."""
    line = stat_line(4242, b"sleep", session=4200, start_time=123456)
    assert parse_stat(line) == ProcStat(session=4200, start_time=123456)


@pytest.mark.parametrize(
    "name",
    [b"my job", b"a) 7 8 (b", b") 1 2 3 4 5", b"((", b"", b"x\ny", b"\xff\xfe"],
)
def test_name_with_spaces_and_parentheses(name: bytes) -> None:
    """A name holding spaces, parentheses or any byte cannot shift the fields:
    they are read after the last ')'."""
    line = stat_line(7, name, session=99, start_time=5)
    assert parse_stat(line) == ProcStat(session=99, start_time=5)


def test_real_line() -> None:
    """A line copied from a real /proc/PID/stat."""
    line = (
        b"16648 (cat) R 16646 16646 8120 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0"
        b" 1157274 3133440 362 18446744073709551615 94754639106048 9475463912592"
        b" 140730559901584 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94754639141936"
        b" 94754639143552 94755670405120 140730559904482 140730559904502"
        b" 140730559904502 140730559905771 0\n"
    )
    assert parse_stat(line) == ProcStat(session=8120, start_time=1157274)


@pytest.mark.parametrize(
    "line",
    [b"", b"1 (no end S 1 1 1", b"1 (short) S 1 1 1 0 -1\n", b"garbage"],
)
def test_not_a_stat_line(line: bytes) -> None:
    """What is not a stat line is a ValueError, not a wrong number."""
    with pytest.raises(ValueError, match=r"^not a /proc/PID/stat line: "):
        parse_stat(line)
