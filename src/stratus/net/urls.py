"""URLs the gateway sends requests (and credentials) to: worker URLs and upstream base URLs.

    check_http_url("http://10.0.0.7:8000/v1/", "base_url")       -> "http://10.0.0.7:8000/v1"
    check_http_url("http://10.0.0.5:8100", "url", plain_remote=False)  # ValueError: secret in clear

One parser for both, so they refuse the same things: no scheme but http(s), no host-less URL, no
credentials, query or fragment (a URL is an address, never a carrier of secrets or parameters).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_http_url(
    url: str, what: str, *, plain_remote: bool = True, example: str = "", credentials_fix: str = ""
) -> str:
    """`url` stripped of spaces and a trailing slash, or ValueError naming `what` and the fix.
    `plain_remote=False`: http:// only to a loopback host (a bearer secret would cross in clear).
    `example` and `credentials_fix` end the messages for a host-less URL and one with credentials."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError(f"{what} must be a URL of at most 2048 characters")
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host{example}")
    if parts.username or parts.password:
        raise ValueError(f"{what} must not hold credentials{credentials_fix}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or a fragment")
    if parts.scheme == "http" and not plain_remote and not is_loopback(parts.hostname):
        raise ValueError(
            f"{what} is plain http:// to a host that is not loopback: the cluster secret would cross "
            "the network in clear; use https://, or allow it explicitly on a trusted network"
        )
    return url.rstrip("/")
