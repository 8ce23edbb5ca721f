"""
What goes wrong before there is an answer, in the client's terms.

Twisted and OpenSSL report a refused connection, a failed handshake or a cut
response in exceptions of their own, often wrapped in others. This module is
the one place where they become :class:`ConnectionFailed`,
:class:`ServerNotTrusted` or :class:`CertificateRejected`, and where a
request we cancelled is told apart from one that failed.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error as net
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from jobworker.client.errors import (
    CertificateRejected,
    ConnectionFailed,
    JobworkerError,
    ServerNotTrusted,
)

# OpenSSL's names for alerts a server sends about a client's certificate.
CERTIFICATE_ALERTS = (
    "certificate required",
    "unknown ca",
    "certificate expired",
    "certificate revoked",
    "certificate unknown",
    "bad certificate",
    "unsupported certificate",
    "access denied",
)


def connection_error(error: BaseException) -> JobworkerError | None:
    """
    The one place where transport-level failures become our errors; None for
    anything else (which is then not ours to explain).

    Twisted wraps what goes wrong during a request in ``ResponseNeverReceived``
    or ``ResponseFailed`` (a list of ``Failure``s). A TLS handshake problem is
    an ``SSL.Error`` inside: OpenSSL's reasons say which side objected. Ours
    say "certificate verify failed"; the server's arrive as alerts ("tlsv13
    alert certificate required", "tlsv1 alert unknown ca", "sslv3 alert
    certificate expired", ...). With TLS 1.3 the server checks our
    certificate after our side of the handshake is done, so its alert shows
    up as the request's failure, not the connection's.
    """
    causes = _causes(error)
    if cancelled(error):
        return None  # we gave up on it: not the connection's fault
    for cause in causes:
        if isinstance(cause, VerificationError):
            return ServerNotTrusted(
                "the server's certificate is for another host name or address"
            )
        if isinstance(cause, SSL.Error):
            return _tls_error(cause)
    for cause in causes:
        if isinstance(cause, net.ConnectionRefusedError):
            return ConnectionFailed("connection refused: is the server running?")
        if isinstance(cause, net.DNSLookupError):
            return ConnectionFailed(f"cannot resolve the server's name: {cause}")
        if isinstance(cause, net.ConnectError | net.TimeoutError):
            return ConnectionFailed(f"cannot connect: {_describe(cause)}")
        if isinstance(cause, net.ConnectionLost | net.ConnectionDone):
            return ConnectionFailed("the server closed the connection")
    if isinstance(error, ResponseFailed):
        return ConnectionFailed("the connection broke during the response")
    return None


def cancelled(error: BaseException) -> bool:
    """True if ``error`` is, or wraps, the cancellation of a request."""
    return any(isinstance(cause, CancelledError) for cause in _causes(error))


def translated(error: Exception) -> Exception:
    """What to raise for ``error``: ours, a plain CancelledError, or itself."""
    if cancelled(error):
        return error if isinstance(error, CancelledError) else CancelledError()
    return connection_error(error) or error


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and, for Twisted's wrapper exceptions, what they wrap."""
    found = [error]
    for reason in getattr(error, "reasons", None) or []:
        if isinstance(reason, Failure) and isinstance(reason.value, BaseException):
            found += _causes(reason.value)
    return found


def _tls_error(error: SSL.Error) -> JobworkerError:
    reasons = _ssl_reasons(error)
    text = "; ".join(reasons) or "TLS handshake failed"
    if any("certificate verify failed" in r for r in reasons):
        return ServerNotTrusted(f"the server's certificate is not trusted: {text}")
    if any(" alert " in f" {r} " and _about_certificate(r) for r in reasons):
        return CertificateRejected(f"the server refused our certificate: {text}")
    return ConnectionFailed(f"TLS handshake failed: {text}")


def _ssl_reasons(error: SSL.Error) -> list[str]:
    details = error.args[0] if error.args else []
    if isinstance(details, list):
        return [str(d[-1]) for d in details if isinstance(d, tuple) and d]
    return [str(details)]


def _about_certificate(reason: str) -> bool:
    return any(reason.endswith(alert) for alert in CERTIFICATE_ALERTS)


def _describe(error: BaseException) -> str:
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__
