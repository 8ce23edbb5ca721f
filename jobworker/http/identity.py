"""
Who is calling: the subject CN of the client's verified certificate, never
anything the client says. The site takes the function as a parameter, so a
test can say who a request is from without a certificate.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest

from jobworker.auth.policy import Identity
from jobworker.http.channel import ApiChannel
from jobworker.tls import peer_common_name

Identify = Callable[[IRequest], Identity | None]


def identity_from_certificate(request: IRequest) -> Identity | None:
    """The caller's identity: the subject CN of its verified certificate."""
    channel = request.channel  # type: ignore[attr-defined]
    if isinstance(channel, ApiChannel):
        return channel.peer_identity()
    name = peer_common_name(channel.transport)
    return None if name is None else Identity(name)
