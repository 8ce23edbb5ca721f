"""
The routes about the server itself, open to any authenticated client:
``/v1/healthz`` and ``/v1/openapi.json``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from twisted.web.server import NOT_DONE_YET

from jobworker.http.endpoint import Call, Endpoint
from jobworker.http.parsing import Query
from jobworker.http.responses import JSON


class HealthEndpoint(Endpoint):
    """``/v1/healthz``: liveness, for any authenticated client."""

    actions = {"GET": None}

    async def handle_GET(self, call: Call) -> dict[str, Any]:
        Query(call.request, set())
        return {
            "status": "ok",
            "running_jobs": self.api.jobs.running_count(),
            "followers": len(self.api.followers),
        }


class OpenAPIEndpoint(Endpoint):
    """``/v1/openapi.json``: the document describing this API."""

    actions = {"GET": None}

    async def handle_GET(self, call: Call) -> Any:
        request = call.request
        Query(request, set())
        document = resources.files("jobworker").joinpath("openapi.json").read_bytes()
        request.setHeader(b"Content-Type", JSON)
        request.setHeader(b"Content-Length", str(len(document)).encode())
        request.write(document)
        request.finish()
        return NOT_DONE_YET
