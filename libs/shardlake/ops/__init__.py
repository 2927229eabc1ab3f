"""What operators see of a run: live progress, Prometheus metrics, lineage, experiment tracking."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def shown(url: str) -> str:
    """``url`` as a log line or message may show it: without a user and password (http://user:secret@host).

    Every reporting channel's address (a Pushgateway, a tracking server) goes through this before a
    warning or an error names it.
    """
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))
