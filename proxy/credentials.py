"""Step 2: find the caller's 3scale credentials in a header, the query string or Basic auth."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from .config import CredentialSettings
from .threescale.models import AppCredentials

MAX_CREDENTIAL_LENGTH = 1024


def extract(
    settings: CredentialSettings, headers: Mapping[str, str], query: Mapping[str, str]
) -> AppCredentials | None:
    """The credentials, or None when the identifying one (user_key or app_id) is missing or empty."""
    if settings.location == "authorization":
        return _from_basic_auth(settings, headers.get("Authorization", ""))
    source = headers if settings.location == "header" else query
    if settings.scheme == "user_key":
        user_key = source.get(settings.user_key or "")
        return AppCredentials(user_key=user_key) if user_key else None
    app_id = source.get(settings.app_id or "")
    if not app_id:
        return None
    app_key = source.get(settings.app_key) if settings.app_key else None
    return AppCredentials(app_id=app_id, app_key=app_key)


def well_formed(credentials: AppCredentials) -> bool:
    """Printable UTF-8 of sane length: anything else can never be a 3scale key (3scale answers 422), so it is
    refused without asking (and without putting undecodable bytes into cache keys or logs)."""
    for value in (credentials.user_key, credentials.app_id, credentials.app_key):
        if value is None:
            continue
        if len(value) > MAX_CREDENTIAL_LENGTH or not value.isprintable():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # aiohttp keeps undecodable header bytes as surrogates
            return False
    return True


def names_to_strip(settings: CredentialSettings) -> tuple[str, ...]:
    """Header or query parameter names that carry credentials, so forwarding can drop them."""
    if settings.location == "authorization":
        return ("Authorization",)
    return tuple(n for n in (settings.user_key, settings.app_id, settings.app_key) if n)


def _from_basic_auth(settings: CredentialSettings, value: str) -> AppCredentials | None:
    """Basic auth: the user name is the user_key, or app_id with the password as app_key (as APIcast)."""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    if not user:
        return None
    if settings.scheme == "app_id":
        return AppCredentials(app_id=user, app_key=password or None)
    return AppCredentials(user_key=user)
