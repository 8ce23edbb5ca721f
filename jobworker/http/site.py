"""
The HTTPS API as a twisted.web site: the resource tree under ``/v1``, and
the site that serves it over :class:`~jobworker.http.channel.ApiChannel`
connections with the request that limits bodies.
"""

from __future__ import annotations

import functools

from twisted.web.resource import Resource
from twisted.web.server import Site

from jobworker.auth.policy import Policy
from jobworker.http.channel import ApiChannel
from jobworker.http.endpoint import Directory
from jobworker.http.follow import FollowStream
from jobworker.http.identity import Identify, identity_from_certificate
from jobworker.http.job_routes import JobsEndpoint
from jobworker.http.library import JobService
from jobworker.http.meta_routes import HealthEndpoint, OpenAPIEndpoint
from jobworker.http.request import request_factory
from jobworker.http.settings import ApiSettings


class Api:
    """What every endpoint shares: the job library, the policy, the settings."""

    def __init__(
        self,
        jobs: JobService,
        policy: Policy,
        settings: ApiSettings | None = None,
        identify: Identify = identity_from_certificate,
    ) -> None:
        self.jobs = jobs
        self.policy = policy
        self.settings = settings or ApiSettings()
        self.identify = identify
        # Open follow streams, for health and tests.
        self.followers: set[FollowStream] = set()

    def root(self) -> Resource:
        """The resource tree: ``/v1/jobs``, ``/v1/healthz``, ``/v1/openapi.json``."""
        root = Directory(self)
        v1 = Directory(self)
        root.putChild(b"v1", v1)
        v1.putChild(b"jobs", JobsEndpoint(self))
        v1.putChild(b"healthz", HealthEndpoint(self))
        v1.putChild(b"openapi.json", OpenAPIEndpoint(self))
        return root

    def site(self) -> Site:
        """The tree served with the settings' deadlines and limits."""
        settings = self.settings
        # A body is JSON whatever its Content-Type says (curl -d sends a
        # form's): Twisted must not parse it into the query arguments.
        site = Site(
            self.root(), timeout=settings.idle_timeout, parsePOSTFormSubmission=False
        )
        # Our channel, not Twisted's HTTP/2-negotiating wrapper: no ALPN is
        # offered (see jobworker.tls), so HTTP/1.1 is all there is.
        site.protocol = functools.partial(ApiChannel, settings)  # type: ignore[method-assign, assignment]
        site.requestFactory = request_factory(settings.max_body)
        site.displayTracebacks = False
        return site
