# The dropin that makes `twistd jobworker` exist. No logic here: it only
# names jobworker.tap, which holds Options and makeService.
from twisted.application.service import ServiceMaker

jobworker = ServiceMaker(  # type: ignore[no-untyped-call]
    "jobworker",
    "jobworker.tap",
    "Run Linux commands for remote clients over mutual TLS.",
    "jobworker",
)
