"""Step 2: find the caller's 3scale credentials in a header, the query string or Authorization, as APIcast
does (gateway/src/apicast/configuration/service.lua, resty/http_authorization.lua).

A credential that is present but empty is still a credential: it goes to 3scale, which answers 403. Only
an absent one is "missing" (401). Query parameters are read as nginx's `$arg_NAME`: the first one whose
name matches without regard to case, its value as sent (not percent-decoded).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from .config import CredentialSettings
from .threescale.models import AppCredentials

MAX_CREDENTIAL_LENGTH = 1024
_AUTHORIZATION = re.compile(r"([A-Za-z0-9]+)\s*(.*)", re.DOTALL)  # APIcast's `^(%w+)%s*(.*)$`
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")


def extract(settings: CredentialSettings, headers: Mapping[str, str], query_string: str) -> AppCredentials | None:
    """The credentials, or None when the identifying one (user_key or app_id) is absent."""
    location = settings.location
    if location == "authorization":
        return _from_authorization(settings, headers.get("Authorization"))
    in_header = location == "header"
    if settings.scheme == "user_key":
        name = settings.user_key or ""
        user_key = headers.get(name) if in_header else nginx_arg(query_string, name)
        return AppCredentials(user_key=user_key) if user_key is not None else None
    name = settings.app_id or ""
    app_id = headers.get(name) if in_header else nginx_arg(query_string, name)
    if app_id is None:
        return None
    key_name = settings.app_key
    app_key = None if not key_name else headers.get(key_name) if in_header else nginx_arg(query_string, key_name)
    return AppCredentials(app_id=app_id, app_key=app_key)


def nginx_arg(query_string: str, name: str) -> str | None:
    """nginx's `$arg_NAME`: the raw value of the first `NAME=` (name compared ignoring case), else None."""
    if not query_string:
        return None
    lower = name.lower()
    for part in query_string.split("&"):
        key, eq, value = part.partition("=")
        if eq and key.lower() == lower:
            return value
    return None


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


def _from_authorization(settings: CredentialSettings, value: str | None) -> AppCredentials | None:
    """APIcast's Authorization parsers: `Basic` (user id and password, split at the last colon) and
    `Bearer` (a token); schemes are compared as written, and any other gives no credentials. v1 takes the
    user id, else the password, else the token as the user_key; v2 the user id or the token as app_id,
    the password as app_key."""
    scheme_param = _AUTHORIZATION.match(value or "")
    userid = password = token = None
    if scheme_param is not None:
        scheme, param = scheme_param.groups()
        if scheme == "Basic":
            decoded = _nginx_base64(param)
            if decoded is not None and ":" in decoded:
                userid, _, password = decoded.rpartition(":")
        elif scheme == "Bearer":
            token = param
    if settings.scheme == "app_id":
        app_id = userid if userid is not None else token
        return AppCredentials(app_id=app_id, app_key=password) if app_id is not None else None
    for candidate in (userid, password, token):
        if candidate is not None:
            return AppCredentials(user_key=candidate)
    return None


def _nginx_base64(param: str) -> str | None:
    """ngx.decode_base64: the standard alphabet up to the first `=`, padding optional; None if invalid."""
    data = param.split("=", 1)[0]
    if _BASE64.fullmatch(data) is None or len(data) % 4 == 1:
        return None
    try:
        decoded = base64.b64decode(data + "=" * (-len(data) % 4))
    except binascii.Error:
        return None
    return decoded.decode("utf-8", "surrogateescape")  # not UTF-8: well_formed() refuses it (403)
