"""The 3scale admin portal's proxy-config endpoints, as APIcast's remote_v2 loader reads them, served from
the emulator's own config, so tests and `demo` run configuration from 3scale end to end.

Each service's `proxy:` (APIcast's proxy object: hosts, api_backend, credentials_location, proxy_rules,
error_*) becomes the `content` of its latest proxy config, with porta's defaults for what it leaves out.
Endpoints (the access token as APIcast sends it, Basic auth with the token as user name, or
`access_token=`; a wrong one is 403 as porta answers):

    GET /admin/api/account/proxy_configs/{env}.json?version=latest&page=N&per_page=M   (max 500 per page)
    GET /admin/api/services.json?page=N&per_page=M
    GET /admin/api/services/{id}/proxy/configs/{env}/latest.json
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

MAX_PER_PAGE = 500
ENVIRONMENTS = ("production", "staging")
PORTAL_FAULTS = ("error", "garbage", "shapeless")

PORTA_DEFAULTS: dict[str, Any] = {
    "credentials_location": "query",
    "auth_user_key": "user_key",
    "auth_app_id": "app_id",
    "auth_app_key": "app_key",
    "error_auth_failed": "Authentication failed",
    "error_status_auth_failed": 403,
    "error_headers_auth_failed": "text/plain; charset=us-ascii",
    "error_auth_missing": "Authentication parameters missing",
    "error_status_auth_missing": 403,
    "error_headers_auth_missing": "text/plain; charset=us-ascii",
    "error_no_match": "No Mapping Rule matched",
    "error_status_no_match": 404,
    "error_headers_no_match": "text/plain; charset=us-ascii",
    "error_limits_exceeded": "Usage limit exceeded",
    "error_status_limits_exceeded": 429,
    "error_headers_limits_exceeded": "text/plain; charset=us-ascii",
    "hosts": [],
    "proxy_rules": [
        {"http_method": "GET", "pattern": "/", "metric_system_name": "hits", "delta": 1, "position": 1, "last": False}
    ],
}


class Portal:
    """Proxy configs by service id, a version counter per service, and a fault switch."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.access_token = ""
        self.fault: str | None = None
        """None, "error" (every portal call answers 503), "garbage" (200 with a body that is not JSON) or
        "shapeless" (200 with JSON that is not a list of proxy configs)."""
        self._services: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        """Every portal request: its path and query (the token left out)."""
        self.load(config)

    def load(self, config: Mapping[str, Any]) -> None:
        """The proxy configs of the emulator's config, no fault (the emulator's reset)."""
        portal = config.get("portal") or {}
        self.access_token = str(portal.get("access_token", "portal-token"))
        self.fault = None
        self.requests.clear()
        self._services.clear()
        for raw in config.get("services") or []:
            self.set_proxy(str(raw["id"]), raw.get("proxy") or {}, raw)

    def set_proxy(self, service_id: str, proxy: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> None:
        """A new latest proxy config for a service (added if new): as when a portal user promotes one."""
        previous = self._services.get(service_id)
        if raw is None and previous is None:
            raise KeyError(f"unknown service {service_id!r}")
        base = (
            previous
            if raw is None
            else {
                "id": int(service_id) if service_id.isdigit() else service_id,
                "backend_version": str(raw.get("backend_version", 1)),
                "backend_authentication_type": "service_token",
                "backend_authentication_value": str(raw.get("token", "")),
            }
        )
        assert base is not None
        content = {key: value for key, value in base.items() if key != "proxy"}
        content["proxy"] = {**copy.deepcopy(PORTA_DEFAULTS), **copy.deepcopy(dict(proxy))}
        self._services[service_id] = content
        self._versions[service_id] = self._versions.get(service_id, 0) + 1

    def remove(self, service_id: str) -> None:
        """The service is deleted in the portal."""
        self._services.pop(service_id, None)

    def proxy(self, service_id: str) -> dict[str, Any]:
        """The service's current proxy object (a copy: change it and `set_proxy` it back)."""
        return copy.deepcopy(self._services[service_id]["proxy"])

    # ---- HTTP ----

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/admin/api/account/proxy_configs/{env}.json", self._proxy_configs),
            ("GET", "/admin/api/services.json", self._service_list),
            ("GET", "/admin/api/services/{id}/proxy/configs/{env}/latest.json", self._latest),
        ]

    def _refused(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, {k: v for k, v in request.query.items() if k != "access_token"}))
        if self.fault == "error":
            return web.Response(status=503, text="Service Unavailable")
        token = request.query.get("access_token")
        auth = request.headers.get("Authorization", "")
        if token is None and auth.startswith("Basic "):
            try:
                token = base64.b64decode(auth[6:].strip()).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                token = None
        if token != self.access_token:
            return web.json_response({"error": "Access denied"}, status=403)
        if self.fault == "garbage":
            return web.Response(status=200, text="<html>maintenance</html>", content_type="application/json")
        if self.fault == "shapeless":
            return _json({"proxy_configs": [{"proxy_config": {"content": "nothing here"}}], "services": 7})
        return None

    def _page(self, request: web.Request, items: list[Any]) -> list[Any]:
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query.get("per_page", str(MAX_PER_PAGE)))))
        except ValueError:
            page, per_page = 1, MAX_PER_PAGE
        return items[(page - 1) * per_page : page * per_page]

    def _config(self, service_id: str, env: str) -> dict[str, Any]:
        content = self._services[service_id]
        return {
            "proxy_config": {
                "id": self._versions[service_id],
                "version": self._versions[service_id],
                "environment": env,
                "content": copy.deepcopy(content),
            }
        }

    async def _proxy_configs(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        env = request.match_info["env"]
        if env not in ENVIRONMENTS:
            return web.json_response({"status": "Not found"}, status=404)
        configs = [self._config(sid, env) for sid in self._services]
        return _json({"proxy_configs": self._page(request, configs)})

    async def _service_list(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        services = [
            {"service": {"id": content["id"], "backend_version": content["backend_version"], "state": "incomplete"}}
            for content in self._services.values()
        ]
        return _json({"services": self._page(request, services)})

    async def _latest(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        sid, env = request.match_info["id"], request.match_info["env"]
        if sid not in self._services or env not in ENVIRONMENTS:
            return web.json_response({"status": "Not found"}, status=404)
        return _json(self._config(sid, env))


def _json(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body), content_type="application/json")
