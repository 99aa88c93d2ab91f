"""Dead-letter entries: usage 3scale would reject, kept (bounded, in the store) for an operator to read.

3scale answers 202 and then drops a whole POST for one bad transaction, so such usage never goes into a POST;
it is recorded with its reason instead, the user key masked.
"""

from __future__ import annotations

import json

from ..redact import mask
from .batch import Dead


def shown_app(kind: str, app: str) -> str:
    """A user key is a secret and is masked; an app_id is an identifier and is shown."""
    return (mask(app) or "") if kind == "user_key" else app


def entry(dead: Dead) -> str:
    """One dead letter as stored: JSON with the app (masked), its kind, the minute, the usage and the reason."""
    minute, kind, app = dead.key
    return json.dumps(
        {"app": shown_app(kind, app), "kind": kind, "minute": minute * 60, "usage": dead.usage, "reason": dead.reason}
    )
