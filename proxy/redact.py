"""What may be shown of a secret: masked credentials for logs, and 3scale reasons without the caller's key."""

from __future__ import annotations

import re

_QUOTED = re.compile(r'\s*"[^"]*"')


def mask(secret: str | None) -> str | None:
    """`abcd…wxyz` for long values, `…` for short ones: enough to correlate, never enough to use."""
    if secret is None:
        return None
    if len(secret) < 12:
        return "…"
    return f"{secret[:4]}…{secret[-4:]}"


def scrub_reason(reason: str | None) -> str | None:
    """3scale's reasons quote the caller's key (`user key "K" is invalid`): drop quoted values."""
    return _QUOTED.sub("", reason) if reason else reason
