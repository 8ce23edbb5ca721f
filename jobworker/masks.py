"""
What the server hides from its isolated jobs: its TLS and policy files and
its data directory, by their real paths, as the launch helper's masks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Directories a host shares with every program: never masked whole, even
# if the server's key is kept in one (its file is masked instead).
SHARED_DIRECTORIES = frozenset(
    ["/", "/etc", "/etc/ssl", "/etc/ssl/certs", "/etc/pki", "/usr", "/usr/local",
     "/usr/share", "/var", "/var/lib", "/home", "/opt", "/srv", "/mnt", "/media"]
)  # fmt: skip


def masked_paths(options: Mapping[str, Any], data_dir: Path) -> tuple[str, ...]:
    """
    What isolated jobs must not see: the TLS and policy files and the data
    directory (a job's output is the server's to write, never the job's), by
    their real paths, as the launch helper takes them. The directory holding
    the server's key is the server's own, and masked whole: a file's mask
    goes when the file is replaced by a rename (as a certificate renewal
    does), a directory's mask stays, over whatever is renamed into it.
    """
    files = [options[name] for name in ("cert", "key", "ca", "policy")]
    paths = [os.path.realpath(f) for f in files if f is not None]
    masks: list[str] = []
    if options["key"] is not None:
        key_directory = os.path.dirname(os.path.realpath(options["key"]))
        if key_directory not in SHARED_DIRECTORIES:
            masks.append(key_directory)
            paths = [p for p in paths if os.path.dirname(p) != key_directory]
    masks += [*paths, os.path.realpath(data_dir)]
    return tuple(dict.fromkeys(masks))
