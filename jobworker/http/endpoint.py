"""
What every route does the same way. An :class:`Endpoint` declares the action
each method needs, and ``Endpoint.render`` does the rest in one place: who is
calling (``Api.identify``, never anything the client says), the handler as a
coroutine, the mapping of errors to a status and a JSON body, and one audit
line per request. Handlers never look at certificates, and no traceback ever
reaches a client.

Checks run in this order: a job the caller may not see is 404 (what exists is
not leaked), an action the caller's role does not grant on a visible job is
403, and only then does the job's state matter (409).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from jobworker.auth.policy import Action, Identity
from jobworker.http.audit import Audit
from jobworker.http.errors import HTTPError, as_http_error
from jobworker.http.responses import send_error, send_json
from jobworker.jobs.errors import JobNotFound
from jobworker.jobs.record import Job
from jobworker.wire import ErrorCode

if TYPE_CHECKING:
    from jobworker.http.site import Api

# Module level: a Logger that is a class attribute takes its class's name.
log = Logger()


@dataclass(frozen=True)
class Call:
    """One request being answered: the request, who sent it, its audit line."""

    request: Request
    identity: Identity
    audit: Audit

    def decided(self, allowed: bool) -> None:
        """Record the policy's answer in the audit line."""
        self.audit.allowed = allowed


Handler = Callable[[Call], Awaitable[Any]]


class Endpoint(Resource):
    """
    One route. Subclasses define ``handle_<METHOD>`` coroutines and say, in
    ``actions``, which policy action each method needs (``None``: any
    authenticated caller; the handler checks per job). A handler returns
    the JSON body of a 200 (``None``: a 204), or ``NOT_DONE_YET`` once it
    has answered itself.
    """

    actions: ClassVar[dict[str, Action | None]] = {}

    def __init__(self, api: Api, job_id: str | None = None) -> None:
        super().__init__()
        self.api = api
        self.job_id = job_id

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return NotFoundEndpoint(self.api)

    def render(self, request: Request) -> int:
        method = (request.method or b"").decode("ascii", "replace")
        identity = self.api.identify(request)
        audit = Audit(identity, self.action_name(method), self.job_id)
        request.notifyFinish().addBoth(audit.finished, request)
        if identity is None:
            forbidden = HTTPError(403, ErrorCode.FORBIDDEN, "no client certificate")
            send_error(request, forbidden)
            return NOT_DONE_YET
        handler: Handler | None = getattr(self, f"handle_{method}", None)
        if handler is None:
            allowed = ", ".join(sorted(self.actions))
            request.setHeader(b"Allow", allowed.encode())
            wrong = HTTPError(405, ErrorCode.METHOD_NOT_ALLOWED, f"use {allowed}")
            send_error(request, wrong)
            return NOT_DONE_YET
        if self.actions[method] is None:
            audit.allowed = True  # any authenticated caller may
        call = Call(request, identity, audit)
        running = Deferred.fromCoroutine(self._run(handler, call))
        # The client went away: stop waiting on its behalf (a long-poll).
        request.notifyFinish().addErrback(lambda _: running.cancel())
        return NOT_DONE_YET

    def action_name(self, method: str) -> str:
        action = self.actions.get(method)
        return action.value if action is not None else method.lower()

    async def _run(self, handler: Handler, call: Call) -> None:
        request = call.request
        try:
            result = await handler(call)
        except CancelledError:
            return  # the client went away; nothing to answer
        except Exception as e:
            error = as_http_error(e)
            if error is None:
                log.failure(
                    "unexpected error in {method} {path}",
                    Failure(),
                    method=request.method,
                    path=request.path,
                )
                error = HTTPError(
                    500, ErrorCode.INTERNAL_ERROR, "internal error; see server log"
                )
            send_error(request, error)
            return
        if result is not NOT_DONE_YET and not request.finished:
            send_json(request, 200 if result is not None else 204, result)


class JobRoute(Endpoint):
    """A route under ``/v1/jobs/{id}``: about one job, if the caller may see it."""

    job_id: str

    def __init__(self, api: Api, job_id: str) -> None:
        super().__init__(api, job_id)

    def visible_job(self, call: Call, action: Action) -> Job:
        """The job, if the caller may see it (else 404) and act on it (else 403)."""
        policy, identity = self.api.policy, call.identity
        try:
            job = self.api.jobs.get(self.job_id)
        except JobNotFound:
            call.decided(False)  # nothing there to be allowed
            raise
        if not policy.can_see(identity, job.owner):
            call.decided(False)
            raise JobNotFound(self.job_id)
        allowed = policy.authorize(identity, action, job.owner).allowed
        call.decided(allowed)
        if not allowed:
            raise HTTPError(
                403,
                ErrorCode.FORBIDDEN,
                f"{identity.name} may not {action.value} job {self.job_id}",
            )
        return job


class NotFoundEndpoint(Endpoint):
    """Any path the API does not have: a JSON 404, audited like the rest."""

    def render(self, request: Request) -> int:
        identity = self.api.identify(request)
        audit = Audit(identity, "unknown_path", None)
        request.notifyFinish().addBoth(audit.finished, request)
        path = (request.path or b"").decode("utf-8", "replace")
        missing = HTTPError(404, ErrorCode.NOT_FOUND, f"no such path: {path}")
        send_error(request, missing)
        return NOT_DONE_YET


class Directory(Resource):
    """An inner node of the tree (``/``, ``/v1``): only its children answer."""

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def getChild(self, path: bytes, request: IRequest) -> Resource:
        return NotFoundEndpoint(self.api)

    def render(self, request: Request) -> int:
        return NotFoundEndpoint(self.api).render(request)
