"""APIcast's service configuration (a proxy config's `content`, as the 3scale admin portal serves it and as
APIcast's JSON configuration file holds it) turned into this proxy's `services:` entries.

Pure data: a JSON document in, YAML-shaped mappings out, so the same validation (and the same error
messages, naming the key) applies to a service from the portal, from APIcast's file and from YAML, and a
YAML entry with the same id can override single fields before it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# APIcast's credentials_location → ours
_LOCATIONS = {"headers": "header", "query": "query", "authorization": "authorization"}
# error kind → the suffix of APIcast's error_*, error_status_* and error_headers_* fields
_ERRORS = {
    "auth_failed": "auth_failed",
    "auth_missing": "auth_missing",
    "no_match": "no_match",
    "limits_exceeded": "limits_exceeded",
}


class NotConvertible(ValueError):
    """A service this proxy cannot serve as APIcast would (its message says which field, and why)."""


def entries_from_document(document: Any) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """APIcast's configuration document (`{"services": [content, ...]}`) → (entries, problems); a service
    that cannot be converted is left out and named in `problems` as (key, message), the others stay."""
    if not isinstance(document, Mapping) or not isinstance(document.get("services"), list):
        return [], [("services", 'must be a list of services (APIcast\'s configuration: {"services": [...]})')]
    return entries_from_contents(document["services"], "services")


def entries_from_contents(contents: list[Any], where: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Each proxy config `content` → an entry, or a problem naming it by position and id."""
    entries: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for i, content in enumerate(contents):
        sid = content.get("id") if isinstance(content, Mapping) else None
        key = f"{where}[{i}]" + (f" (service {sid})" if sid is not None else "")
        try:
            entries.append(service_entry(content))
        except NotConvertible as exc:
            problems.append((key, str(exc)))
    return entries, problems


def service_entry(content: Any) -> dict[str, Any]:
    """One proxy config `content` (id, backend_version, backend_authentication_*, proxy{...}) → an entry."""
    if not isinstance(content, Mapping):
        raise NotConvertible("must be a JSON object")
    if content.get("id") in (None, ""):
        raise NotConvertible("id: is missing")
    proxy = content.get("proxy")
    if not isinstance(proxy, Mapping):
        raise NotConvertible("proxy: is missing (the service has no proxy configuration)")
    auth_type = content.get("backend_authentication_type") or "service_token"
    if auth_type != "service_token":
        raise NotConvertible(
            f"backend_authentication_type: {auth_type!r} is not supported (only service_token; 3scale issues one "
            "per service)"
        )
    entry: dict[str, Any] = {
        "id": str(content["id"]),
        "token": content.get("backend_authentication_value") or "",
        "credentials": _credentials(str(content.get("backend_version", "1")), proxy),
        "mapping_rules": _rules(proxy.get("proxy_rules")),
        "errors": _errors(proxy),
    }
    if proxy.get("api_backend"):
        entry["upstream"] = proxy["api_backend"]
    backend = proxy.get("backend")
    if isinstance(backend, Mapping) and backend.get("endpoint"):
        entry["backend_url"] = backend["endpoint"]
    hosts = proxy.get("hosts")
    if isinstance(hosts, list) and hosts:
        entry["match"] = {"hosts": [str(h) for h in hosts]}
    return entry


def _credentials(backend_version: str, proxy: Mapping[str, Any]) -> dict[str, Any]:
    location_raw = proxy.get("credentials_location") or "query"
    location = _LOCATIONS.get(str(location_raw))
    if location is None:
        raise NotConvertible(f"proxy.credentials_location: {location_raw!r} is not headers, query or authorization")
    if backend_version == "1":
        return {"location": location, "user_key": proxy.get("auth_user_key") or "user_key"}
    if backend_version == "2":
        return {
            "location": location,
            "app_id": proxy.get("auth_app_id") or "app_id",
            "app_key": proxy.get("auth_app_key") or "app_key",
        }
    raise NotConvertible(
        f"backend_version: {backend_version!r} is not supported (1: user_key, 2: app_id and app_key; "
        "OAuth/OIDC services are not served yet)"
    )


def _rules(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []  # a service with no rules: every request is no_match, as in APIcast
    indexed = [(rule.get("position"), i, rule) for i, rule in enumerate(raw) if isinstance(rule, Mapping)]
    # the portal's order is `position`; rules without one keep their place after those with one
    indexed.sort(key=lambda t: (t[0] is None, t[0] if isinstance(t[0], int) else 0, t[1]))
    rules = []
    for _, _, rule in indexed:
        rules.append(
            {
                "method": rule.get("http_method") or "ANY",
                "pattern": rule.get("pattern") or "",
                "metric": rule.get("metric_system_name") or "",
                "delta": rule.get("delta", 1),
                "last": bool(rule.get("last", False)),
            }
        )
    return rules


def _errors(proxy: Mapping[str, Any]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    for kind, suffix in _ERRORS.items():
        answer: dict[str, Any] = {}
        if proxy.get(f"error_status_{suffix}") is not None:
            answer["status"] = proxy[f"error_status_{suffix}"]
        if proxy.get(f"error_{suffix}") is not None:
            answer["message"] = proxy[f"error_{suffix}"]
        if proxy.get(f"error_headers_{suffix}"):
            answer["content_type"] = proxy[f"error_headers_{suffix}"]
        if answer:
            errors[kind] = answer
    return errors
