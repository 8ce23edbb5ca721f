"""
jobworker-client: run and watch jobs on a jobworker server.

Usage:

    jobworker-client run -- make test        start, follow, exit with its code
    jobworker-client start -- sleep 60       start one job; prints its id
    jobworker-client start --job 'make lint' --job 'make docs'
                                             start several; one id per line
    jobworker-client output -f ID            follow a job's output
    jobworker-client status ID [ID...]       records of jobs
    jobworker-client list [--status running] [--owner NAME | --all]
                                             our jobs; --all: all we may read
    jobworker-client stop [--grace 5] ID [ID...]
    jobworker-client wait ID                 block until it ends; exit with its code
    jobworker-client purge ID [ID...]        delete ended jobs and their output

The server and credentials come from --server, --ca, --cert and --key, or
JOBWORKER_SERVER, JOBWORKER_CA, JOBWORKER_CERT and JOBWORKER_KEY. Without
them: https://127.0.0.1:8443 and the development PKI in ./certs: ca.pem,
and USER.pem and USER.key for --user (or JOBWORKER_USER, default alice).

Every command takes --json for scripts. start, stop and status print one
record per line; list prints {"jobs": [...]}; wait prints {"event":
"ended", "job": ...}. output and run print JSON lines: {"event": "output",
"offset": N, "data": BASE64} per chunk, then output ends with {"event":
"end", "next_offset": N, "complete": true|false} and run with its "ended"
line (run begins with {"event": "started", "job": ...}).

A job's output is written to stdout byte for byte, as it arrives.
Errors are one line on stderr.

Exit codes:
  0    success
  1    unexpected error (a bug: please report it)
  2    invalid arguments, unusable certificate or key files, or a request
       the server refused as invalid (400, 413, 416)
  3    cannot reach the server: refused, unreachable, connection lost
  4    the server's certificate is not trusted (other CA, other host name)
  5    the server refused our certificate (other CA, expired, missing)
  6    permission denied (403)
  7    no such job, or not one we may see (404)
  8    conflict (409): stopping an ended job, purging a running one
  9    other server error (429 too many jobs, 503 shutting down, 5xx)
  141  stdout was closed (broken pipe)
run and wait exit with the job's outcome instead:
  N        the job exited with code N (a job's code may equal one above)
  128+N    the job was killed by signal N (137: SIGKILL, 143: SIGTERM)
  124      the job timed out
  125      the job was lost: the server stopped while it ran
  127      the job failed to start (command not found, not executable)
  130      interrupted by Ctrl-C (run first stops the job, waits for it)
"""

from __future__ import annotations

from jobworker.cli.arguments import parse
from jobworker.cli.exits import Exit, explain
from jobworker.cli.script import dispatch, main

__all__ = ["Exit", "dispatch", "explain", "main", "parse"]
