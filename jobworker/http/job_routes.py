"""
The routes of jobs themselves: ``/v1/jobs`` (list, start), ``/v1/jobs/{id}``
(a record, purge) and ``/v1/jobs/{id}/stop``.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from jobworker.auth.policy import Action, check_job_request
from jobworker.http.endpoint import Call, Endpoint, JobRoute, NotFoundEndpoint
from jobworker.http.errors import HTTPError
from jobworker.http.output_routes import OutputEndpoint
from jobworker.http.parsing import Query, parse_grace, read_json
from jobworker.http.responses import send_json
from jobworker.jobs.errors import OUT_OF_DESCRIPTORS
from jobworker.jobs.spec import parse_job_spec
from jobworker.wire import ErrorCode


class JobsEndpoint(Endpoint):
    """``/v1/jobs``: list jobs, start a job."""

    actions = {"GET": Action.READ, "POST": Action.START}

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return JobEndpoint(self.api, path.decode("ascii", "replace"))

    async def handle_GET(self, call: Call) -> dict[str, Any]:
        query = Query(call.request, {"status", "owner"})
        owner = query.text("owner")
        statuses = query.statuses()
        jobs = self.api.jobs.list(owner, statuses)
        policy, identity = self.api.policy, call.identity
        call.decided(policy.authorize(identity, Action.READ, None).allowed)
        readable = [
            j for j in jobs if policy.authorize(identity, Action.READ, j.owner).allowed
        ]
        return {"jobs": [self.api.jobs.describe(j) for j in readable]}

    async def handle_POST(self, call: Call) -> Any:
        Query(call.request, set())
        identity = call.identity
        role = self.api.policy.role_for(identity)
        decision = self.api.policy.authorize(identity, Action.START, None)
        call.decided(decision.allowed)
        if role is None or not decision.allowed:
            raise HTTPError(
                403, ErrorCode.FORBIDDEN, f"{identity.name} may not start jobs"
            )
        spec = parse_job_spec(read_json(call.request))
        check_job_request(role, spec)
        try:
            job = await self.api.jobs.start(
                spec,
                identity.name,
                run_as=role.run_as,
                ceiling=role.ceilings,
                sandbox=role.sandbox,
            )
        except OSError as e:
            # No descriptors to spare (a job needs pipes and files): the
            # server is busy, not broken; a later try may well succeed.
            if e.errno not in OUT_OF_DESCRIPTORS:
                raise
            raise HTTPError(
                503,
                ErrorCode.OUT_OF_RESOURCES,
                "the server has no file descriptors to spare; try again later",
                {b"Retry-After": b"1"},
            ) from None
        call.audit.job_id = job.id
        call.request.setHeader(b"Location", f"/v1/jobs/{job.id}".encode())
        send_json(call.request, 201, self.api.jobs.describe(job))
        return NOT_DONE_YET


class JobEndpoint(JobRoute):
    """``/v1/jobs/{id}``: one job's record; purge it."""

    actions = {"GET": Action.READ, "DELETE": Action.PURGE}

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        if path == b"stop":
            return StopEndpoint(self.api, self.job_id)
        if path == b"output":
            return OutputEndpoint(self.api, self.job_id)
        return NotFoundEndpoint(self.api)

    async def handle_GET(self, call: Call) -> dict[str, object]:
        Query(call.request, set())
        return self.api.jobs.describe(self.visible_job(call, Action.READ))

    async def handle_DELETE(self, call: Call) -> None:
        Query(call.request, set())
        self.visible_job(call, Action.PURGE)
        self.api.jobs.purge(self.job_id)


class StopEndpoint(JobRoute):
    """``/v1/jobs/{id}/stop``: SIGTERM, grace, SIGKILL."""

    actions = {"POST": Action.STOP}

    async def handle_POST(self, call: Call) -> Any:
        Query(call.request, set())
        self.visible_job(call, Action.STOP)
        grace = parse_grace(read_json(call.request, empty_ok=True))
        job = self.api.jobs.stop(self.job_id, grace)
        send_json(call.request, 202, self.api.jobs.describe(job))
        return NOT_DONE_YET
