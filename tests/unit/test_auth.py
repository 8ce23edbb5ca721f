"""Policy: parsing the TOML file strictly, deciding, and capping limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobworker.auth import (
    Action,
    CeilingExceeded,
    Decision,
    Identity,
    PermissionDenied,
    Policy,
    PolicyError,
    Role,
    Scope,
    check_job_request,
)
from jobworker.jobs.spec import LIMIT_NAMES, IOLimits, Isolation, JobSpec, Limits

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"
ALICE, BOB, CHARLIE, MALLORY = (
    Identity(n) for n in ("alice", "bob", "charlie", "mallory")
)
G = 1 << 30
M = 1 << 20


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_toml(EXAMPLE)


def error(text: str) -> str:
    """The PolicyError message for a policy text (it must be refused)."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml_text(text, "policy.toml")
    return str(caught.value)


# The example file.


def test_example_policy_has_the_three_roles(policy: Policy) -> None:
    """The shipped example gives alice, bob and charlie their roles."""
    assert policy.identities == {
        "alice": "operator",
        "bob": "auditor",
        "charlie": "admin",
    }
    operator = policy.roles["operator"]
    assert operator == Role(
        name="operator",
        grants={action: Scope.OWN for action in Action},
        run_as=None,  # each job a uid of its own
        ceilings=Limits(
            cpu=2.0,
            memory=2 * G,
            pids=512,
            io=IOLimits(
                read_bps=100 * M, write_bps=50 * M, read_iops=2000, write_iops=1000
            ),
        ),
        allow_host_network=False,
    )
    assert policy.roles["auditor"] == Role("auditor", {Action.READ: Scope.ALL})
    admin = policy.roles["admin"]
    assert admin.grants == {action: Scope.ALL for action in Action}
    assert (admin.run_as, admin.allow_host_network) == (None, True)
    assert admin.ceilings.memory == 16 * G


def test_role_for_unknown_identity_is_none(policy: Policy) -> None:
    """An identity the policy does not list has no role."""
    assert policy.role_for(MALLORY) is None
    assert policy.role_for(ALICE) == policy.roles["operator"]


# Decisions.


@pytest.mark.parametrize(
    ("identity", "action", "owner", "allowed", "reason"),
    [
        (ALICE, Action.START, None, True, "role operator grants start over own"),
        (ALICE, Action.STOP, "alice", True, "role operator grants stop over own"),
        (
            ALICE,
            Action.STOP,
            "bob",
            False,
            "role operator grants stop on own jobs only",
        ),
        (
            ALICE,
            Action.READ,
            "charlie",
            False,
            "role operator grants read on own jobs only",
        ),
        (ALICE, Action.PURGE, "alice", True, "role operator grants purge over own"),
        (BOB, Action.READ, "alice", True, "role auditor grants read over all"),
        (BOB, Action.READ, None, True, "role auditor grants read over all"),
        (BOB, Action.START, None, False, "role auditor does not grant start"),
        (BOB, Action.STOP, "alice", False, "role auditor does not grant stop"),
        (BOB, Action.PURGE, "bob", False, "role auditor does not grant purge"),
        (CHARLIE, Action.STOP, "alice", True, "role admin grants stop over all"),
        (CHARLIE, Action.PURGE, "bob", True, "role admin grants purge over all"),
        (MALLORY, Action.READ, None, False, "mallory has no role"),
        (MALLORY, Action.READ, "mallory", False, "mallory has no role"),
    ],
)
def test_authorize(
    policy: Policy,
    identity: Identity,
    action: Action,
    owner: str | None,
    allowed: bool,
    reason: str,
) -> None:
    """Each role is allowed exactly its grants, over its scope."""
    assert policy.authorize(identity, action, owner) == Decision(allowed, reason)


@pytest.mark.parametrize(
    ("identity", "owner", "visible"),
    [
        (ALICE, "alice", True),
        (ALICE, "bob", False),
        (BOB, "alice", True),
        (BOB, "charlie", True),
        (CHARLIE, "alice", True),
        (MALLORY, "mallory", False),
    ],
)
def test_can_see(policy: Policy, identity: Identity, owner: str, visible: bool) -> None:
    """A job is visible to a role that grants any action over its owner."""
    assert policy.can_see(identity, owner) is visible


def test_stop_over_all_makes_others_jobs_visible() -> None:
    """A role that may stop anyone's job can see it, though it may not read it."""
    policy = Policy.from_toml_text(
        '[roles.oncall]\ngrants = { stop = "all", read = "own" }\n'
        '[identities]\ndave = "oncall"\n'
    )
    dave = Identity("dave")
    assert policy.can_see(dave, "alice") is True
    assert policy.authorize(dave, Action.STOP, "alice").allowed is True
    assert policy.authorize(dave, Action.READ, "alice") == Decision(
        False, "role oncall grants read on own jobs only"
    )


def test_default_policy_denies_everyone() -> None:
    """Without a policy file nobody may do or see anything."""
    policy = Policy.default()
    for action in Action:
        assert policy.authorize(ALICE, action, None) == Decision(
            False, "alice has no role"
        )
    assert policy.can_see(ALICE, "alice") is False


def test_empty_policy_file_denies_everyone() -> None:
    """An empty file is a valid policy that allows nothing."""
    assert Policy.from_toml_text("") == Policy.default()


def test_role_defaults() -> None:
    """A role with only grants names no user its jobs run as (each gets a
    uid of its own), and gives them no host network."""
    policy = Policy.from_toml_text('[roles.r]\ngrants = { read = "own" }\n')
    assert policy.roles["r"] == Role(
        name="r",
        grants={Action.READ: Scope.OWN},
        run_as=None,
        ceilings=Limits(),
        allow_host_network=False,
    )


def test_policy_built_in_code_refuses_an_unknown_role() -> None:
    """Policy values are consistent however they are made."""
    with pytest.raises(ValueError, match="identity 'alice' has unknown role 'x'"):
        Policy(roles={}, identities={"alice": "x"})


# Parsing: every mistake names the file and the key.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[roles.operator]\ngrants = { stopp = "own" }\n',
            "roles.operator.grants.stopp: unknown action "
            "(expected start, stop, read, purge)",
        ),
        (
            '[roles.operator]\ngrants = { stop = "mine" }\n',
            "roles.operator.grants.stop: unknown scope (expected own, all)",
        ),
        (
            "[roles.operator]\ngrants = { stop = 1 }\n",
            "roles.operator.grants.stop: must be a non-empty string",
        ),
        (
            '[roles.operator]\ngrants = "all"\n',
            "roles.operator.grants: must be a table",
        ),
        (
            "[roles.operator]\ncolour = 1\n",
            "roles.operator.colour: unknown key "
            "(expected allow_host_network, allow_root, ceilings, grants, run_as,"
            " seccomp, tmpfs, writable)",
        ),
        (
            "[roles.operator]\nrun_as = 0\n",
            "roles.operator.run_as: must be a non-empty string",
        ),
        (
            '[roles.operator]\nrun_as = "no body"\n',
            "roles.operator.run_as: 'no body' is not a Unix user name",
        ),
        (
            '[roles.operator]\nallow_host_network = "yes"\n',
            "roles.operator.allow_host_network: must be true or false",
        ),
        (
            '[roles."bad role"]\n',
            'roles."bad role": a role name is letters, digits, _ and - only',
        ),
        ("roles = 1\n", "roles: must be a table"),
        ("[roles]\noperator = 1\n", "roles.operator: must be a table"),
        ("[users]\nalice = 1\n", "users: unknown key (expected identities, roles)"),
        (
            '[identities]\nalice = "operator"\n',
            "identities.alice: unknown role 'operator' (roles: none defined)",
        ),
        (
            '[roles.admin]\n[identities]\n"ci@example" = "operatr"\n',
            "identities.\"ci@example\": unknown role 'operatr' (roles: admin)",
        ),
        (
            "[roles.admin]\n[identities]\nalice = 1\n",
            "identities.alice: must be a non-empty string",
        ),
    ],
)
def test_policy_mistakes_are_named(text: str, message: str) -> None:
    """Structure, grants and identities are checked; the key path is named."""
    assert error(text) == f"policy.toml: {message}"


@pytest.mark.parametrize(
    ("ceilings", "message"),
    [
        ("cpu = 0", "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        ("cpu = -1.5", "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        ("cpu = inf", "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        ("cpu = nan", "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        ("cpu = true", "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        ('cpu = "2"', "cpu: must be a positive number of CPUs, such as 0.5 or 2"),
        (
            'memory = "lots"',
            'memory: must be a positive size such as 536870912 or "512M"',
        ),
        ("memory = 0", 'memory: must be a positive size such as 536870912 or "512M"'),
        ("memory = 1.5", 'memory: must be a positive size such as 536870912 or "512M"'),
        (
            'memory = "0.1"',
            'memory: must be a positive size such as 536870912 or "512M"',
        ),
        (
            'memory = "2X"',
            'memory: must be a positive size such as 536870912 or "512M"',
        ),
        ("pids = 0", "pids: must be a positive whole number"),
        ("pids = 2.5", "pids: must be a positive whole number"),
        ("pids = false", "pids: must be a positive whole number"),
        ("swap = 1", "swap: unknown key (expected cpu, io, memory, pids)"),
        ("io = 1", "io: must be a table"),
        (
            "io = { read_bytes = 1 }",
            "io.read_bytes: unknown key "
            "(expected read_bps, read_iops, write_bps, write_iops)",
        ),
        (
            'io = { write_bps = "fast" }',
            'io.write_bps: must be a positive size such as 536870912 or "512M"',
        ),
        ('io = { read_iops = "1K" }', "io.read_iops: must be a positive whole number"),
    ],
)
def test_ceiling_mistakes_are_named(ceilings: str, message: str) -> None:
    """Each ceiling is type- and range-checked, and named when wrong."""
    text = f"[roles.operator.ceilings]\n{ceilings}\n"
    assert error(text) == f"policy.toml: roles.operator.ceilings.{message}"


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ('"512M"', 512 * M),
        ('"2G"', 2 * G),
        ('"2g"', 2 * G),
        ('"1.5G"', 3 * G // 2),
        ('"64KiB"', 64 * 1024),
        ('"1T"', 1 << 40),
        ("1048576", M),
    ],
)
def test_sizes_are_parsed_to_bytes(memory: str, expected: int) -> None:
    """Sizes take K, M, G and T as powers of 1024, or a plain byte count."""
    policy = Policy.from_toml_text(
        f"[roles.r.ceilings]\nmemory = {memory}\nio = {{ read_bps = {memory} }}\n"
    )
    assert policy.roles["r"].ceilings.memory == expected
    assert policy.roles["r"].ceilings.io.read_bps == expected


def test_toml_syntax_error_names_the_file_and_line() -> None:
    """Broken TOML is reported with the file, line and column."""
    assert error("[roles.operator\n") == (
        "policy.toml: Expected ']' at the end of a table declaration "
        "(at line 1, column 16)"
    )


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    """A policy file that is not there is reported with its path."""
    missing = tmp_path / "policy.toml"
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(missing)
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"


def test_policy_file_errors_name_the_file(tmp_path: Path) -> None:
    """A mistake in a file on disk names that file."""
    path = tmp_path / "policy.toml"
    path.write_text('[roles.operator]\ngrants = { stopp = "own" }\n')
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(path)
    assert str(caught.value) == (
        f"{path}: roles.operator.grants.stopp: unknown action "
        "(expected start, stop, read, purge)"
    )


def test_policy_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    """A binary file is refused, named."""
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(path)
    assert str(caught.value) == f"{path}: not UTF-8 text"


# Ceilings: a request is held to its role's (check_job_request), then the
# limits it leaves out are filled in within them (Limits.or_defaults, as the
# job library does on start).


def job_limits(role: Role, request: Limits, defaults: Limits | None = None) -> Limits:
    """The limits a job of ``role`` gets for ``request``: checked, then filled in."""
    check_job_request(role, JobSpec("true", limits=request))
    return request.or_defaults(defaults or Limits(), role.ceilings)


def test_request_within_ceilings_keeps_its_limits(policy: Policy) -> None:
    """Limits at or under the ceilings are the job's limits."""
    request = Limits(cpu=2.0, memory=256 * M, pids=64, io=IOLimits(20 * M, None, 10))
    assert job_limits(policy.roles["operator"], request) == Limits(
        cpu=2.0,
        memory=256 * M,
        pids=64,
        io=IOLimits(read_bps=20 * M, write_bps=50 * M, read_iops=10, write_iops=1000),
    )


def test_limits_left_out_get_the_ceiling(policy: Policy) -> None:
    """Leaving a limit out cannot escape a ceiling: the job gets the ceiling."""
    operator = policy.roles["operator"]
    assert (
        job_limits(operator, Limits())
        == operator.ceilings
        == Limits(
            cpu=2.0,
            memory=2 * G,
            pids=512,
            io=IOLimits(
                read_bps=100 * M, write_bps=50 * M, read_iops=2000, write_iops=1000
            ),
        )
    )


def test_role_without_ceilings_passes_requests_through(policy: Policy) -> None:
    """No ceiling, no cap: the request's limits (or none) stand."""
    auditor = policy.roles["auditor"]
    assert job_limits(auditor, Limits(memory=64 * G)) == Limits(memory=64 * G)


# Server defaults, for the limits a request leaves out.


def test_default_below_the_ceiling_is_the_jobs_limit(policy: Policy) -> None:
    """A limit left out gets the server's default where it is under the ceiling."""
    defaults = Limits(
        cpu=0.5, memory=512 * M, pids=64, io=IOLimits(read_bps=20 * M, write_iops=100)
    )
    assert job_limits(policy.roles["operator"], Limits(), defaults) == Limits(
        cpu=0.5,
        memory=512 * M,
        pids=64,
        io=IOLimits(read_bps=20 * M, write_bps=50 * M, read_iops=2000, write_iops=100),
    )


def test_default_above_the_ceiling_gives_the_ceiling(policy: Policy) -> None:
    """A server default above the role's ceiling is capped at it, not refused."""
    operator = policy.roles["operator"]
    defaults = Limits(
        cpu=4.0, memory=8 * G, pids=10_000, io=IOLimits(read_bps=G, write_iops=5000)
    )
    assert job_limits(operator, Limits(), defaults) == operator.ceilings


def test_no_default_gives_the_ceiling(policy: Policy) -> None:
    """A limit left out with no server default for it gets the role's ceiling."""
    limits = job_limits(policy.roles["operator"], Limits(), Limits(memory=512 * M))
    assert (limits.cpu, limits.memory, limits.pids) == (2.0, 512 * M, 512)
    assert limits.io.read_bps == 100 * M


def test_no_ceiling_and_no_default_gives_no_limit(policy: Policy) -> None:
    """Without a ceiling a limit left out gets the default, or none if none is set."""
    limits = job_limits(policy.roles["auditor"], Limits(), Limits(memory=512 * M))
    assert limits == Limits(memory=512 * M)


def test_no_ceiling_given_applies_the_defaults_as_they_are() -> None:
    """A job started without a ceiling (not through the API) gets the defaults."""
    defaults = Limits(memory=512 * M, io=IOLimits(write_iops=5))
    assert Limits(pids=3).or_defaults(defaults) == Limits(
        memory=512 * M, pids=3, io=IOLimits(write_iops=5)
    )


def test_requested_limit_beats_the_default(policy: Policy) -> None:
    """A limit the request sets stands over the default, and the ceiling still binds."""
    operator = policy.roles["operator"]
    defaults = Limits(memory=512 * M)
    assert job_limits(operator, Limits(memory=G), defaults).memory == G
    assert job_limits(operator, Limits(memory=M), defaults).memory == M
    with pytest.raises(CeilingExceeded) as caught:
        job_limits(operator, Limits(memory=4 * G), defaults)
    assert caught.value.field == "limits.memory"


@pytest.mark.parametrize(
    ("request_", "field", "message"),
    [
        (Limits(cpu=2.5), "limits.cpu", "2.5 is more than this role allows (2)"),
        (
            Limits(memory=4 * G),
            "limits.memory",
            "4G is more than this role allows (2G)",
        ),
        (
            Limits(memory=2 * G + 1),
            "limits.memory",
            "2147483649 is more than this role allows (2G)",
        ),
        (Limits(pids=513), "limits.pids", "513 is more than this role allows (512)"),
        (
            Limits(io=IOLimits(read_bps=200 * M)),
            "limits.io.read_bps",
            "200M is more than this role allows (100M)",
        ),
        (
            Limits(io=IOLimits(write_iops=1001)),
            "limits.io.write_iops",
            "1001 is more than this role allows (1000)",
        ),
    ],
)
def test_limit_above_a_ceiling_is_refused(
    policy: Policy, request_: Limits, field: str, message: str
) -> None:
    """A request above a ceiling is refused, naming the limit and both values."""
    with pytest.raises(CeilingExceeded) as caught:
        job_limits(policy.roles["operator"], request_)
    assert (caught.value.field, caught.value.message) == (field, message)
    assert str(caught.value) == f"{field}: {message}"


@pytest.mark.parametrize("name", LIMIT_NAMES)
def test_every_limit_is_held_to_its_ceiling(name: str) -> None:
    """No limit escapes the check: each one above its ceiling is refused, named."""
    ceiling = {n: 10 for n in LIMIT_NAMES}
    role = Role("r", ceilings=limits_of(ceiling))
    with pytest.raises(CeilingExceeded) as caught:
        job_limits(role, limits_of({**ceiling, name: 11}))
    assert caught.value.field == f"limits.{name}"
    job_limits(role, limits_of(ceiling))


def test_io_limits_are_named_first(policy: Policy) -> None:
    """Several limits above their ceilings: the refusal names the io one,
    then cpu, memory, pids, as it always has."""
    request = Limits(cpu=9.0, memory=4 * G, io=IOLimits(write_bps=G, read_iops=9999))
    with pytest.raises(CeilingExceeded) as caught:
        job_limits(policy.roles["operator"], request)
    assert caught.value.field == "limits.io.write_bps"
    with pytest.raises(CeilingExceeded) as caught:
        job_limits(policy.roles["operator"], Limits(cpu=9.0, memory=4 * G))
    assert caught.value.field == "limits.cpu"


def limits_of(values: dict[str, int]) -> Limits:
    io = {n.removeprefix("io."): v for n, v in values.items() if n.startswith("io.")}
    return Limits(
        cpu=float(values["cpu"]),
        memory=values["memory"],
        pids=values["pids"],
        io=IOLimits(**io),
    )


def test_host_network_needs_the_role_to_allow_it(policy: Policy) -> None:
    """Only a role with allow_host_network may ask for the host's network."""
    host = JobSpec("true", isolation=Isolation(network="host"))
    with pytest.raises(PermissionDenied) as caught:
        check_job_request(policy.roles["operator"], host)
    assert str(caught.value) == (
        "isolation.network: role operator does not allow host networking"
    )
    check_job_request(policy.roles["admin"], host)


def test_limits_are_checked_before_the_network(policy: Policy) -> None:
    """A request over a ceiling and for host networking is refused for the limit."""
    spec = JobSpec(
        "true", limits=Limits(pids=10_000), isolation=Isolation(network="host")
    )
    with pytest.raises(CeilingExceeded):
        check_job_request(policy.roles["operator"], spec)


def test_own_network_is_allowed_to_every_role(policy: Policy) -> None:
    """The default, a private network namespace, needs no permission."""
    check_job_request(policy.roles["auditor"], JobSpec("true"))
