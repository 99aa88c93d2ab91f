"""The 3scale Account Management API calls APIcast's remote_v2 loader makes, to fetch every service's
latest proxy config for one environment.

`portal_endpoint` is APIcast's THREESCALE_PORTAL_ENDPOINT: `https://ACCESS_TOKEN@ACCOUNT-admin.3scale.net`;
the token goes, as APIcast sends it, as Basic auth (`ACCESS_TOKEN:`), never in a URL, a log line or an
error message. Pages of 500 are asked for until one comes back short (APIcast's loop). A portal without
the account-wide proxy_configs endpoint (404) is asked service by service, as APIcast does when a
service's version is pinned: /admin/api/services.json, then each service's latest proxy config.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

PER_PAGE = 500
MAX_PAGES = 200  # 100,000 services: far beyond any account, and a bound on a portal that never ends a list
USER_AGENT = "threescale-proxy"


class PortalError(Exception):
    """The portal could not be read, or its answer is not what APIcast expects; the message names the
    endpoint and the reason, never the token."""


class PortalClient:
    """Reads proxy configs from one 3scale admin portal; one aiohttp session, opened on first use."""

    def __init__(self, endpoint: str, environment: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the portal endpoint must be an http:// or https:// URL")
        if parts.path not in ("", "/"):
            raise ValueError("a portal endpoint with a path (APIcast's custom config path) is not supported")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        self._base = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        userinfo = ""
        if parts.username is not None or parts.password is not None:
            userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if userinfo:
            self._headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        self.environment = environment
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def origin(self) -> str:
        """The portal's scheme, host and port: what logs may show of the endpoint."""
        return self._base

    async def contents(self) -> list[Any]:
        """Every service's latest proxy config `content`, in the portal's order."""
        try:
            configs = await self._pages(
                f"/admin/api/account/proxy_configs/{self.environment}.json",
                "proxy_configs",
                {"version": "latest"},
            )
        except _NotFound:
            return await self._per_service()
        return [_content(item, "proxy_configs") for item in configs]

    async def _per_service(self) -> list[Any]:
        services = await self._pages("/admin/api/services.json", "services", {})
        contents = []
        for item in services:
            service = item.get("service") if isinstance(item, dict) else None
            sid = service.get("id") if isinstance(service, dict) else None
            if sid is None:
                raise PortalError("/admin/api/services.json: a service without an id")
            path = f"/admin/api/services/{sid}/proxy/configs/{self.environment}/latest.json"
            try:
                contents.append(_content(await self._get(path, {}), path))
            except _NotFound:
                continue  # never deployed to this environment: APIcast skips it too
        return contents

    async def _pages(self, path: str, key: str, params: dict[str, str]) -> list[Any]:
        items: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            body = await self._get(path, {**params, "page": str(page), "per_page": str(PER_PAGE)})
            batch = body.get(key) if isinstance(body, dict) else None
            if not isinstance(batch, list):
                raise PortalError(f"{path}: the answer has no {key!r} list")
            items.extend(batch)
            if len(batch) != PER_PAGE:
                return items
        raise PortalError(f"{path}: more than {MAX_PAGES} pages")

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        try:
            async with self._session.get(self._base + path, params=params, allow_redirects=False) as resp:
                if resp.status == 404:
                    raise _NotFound(path)
                if resp.status != 200:
                    raise PortalError(f"{path}: status {resp.status}")
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PortalError(f"{path}: {type(exc).__name__}") from None
        try:
            return json.loads(text)
        except ValueError:
            raise PortalError(f"{path}: the answer is not JSON") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NotFound(Exception):
    pass


def _content(item: Any, where: str) -> Any:
    config = item.get("proxy_config") if isinstance(item, dict) else None
    content = config.get("content") if isinstance(config, dict) else None
    if not isinstance(content, dict):
        raise PortalError(f"{where}: a proxy config without content")
    return content
