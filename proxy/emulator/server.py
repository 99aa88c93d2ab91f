"""A 3scale Service Management API (apisonator) emulator on aiohttp, for development, `demo` and tests.

It speaks the real wire protocol of /work/shared/THREESCALE.md (status codes, compact XML, error
documents, order of checks, whole-batch report failures) and is written independently of
`proxy.threescale`, so the two cross-check each other. Beyond the protocol it offers fault injection
(`delay`, `set_down`), a record of the newest protocol calls (`calls`), the ground truth of accepted usage
(`reported`, the newest transactions, and `reported_totals`, exact sums), and a small JSON control API under
`/_emulator/` for when it runs in another process. Records keep the newest `max_records` entries (default
10,000) so a long `demo` does not grow; `call_count` and `reported_totals` stay exact beyond that.

Config (a dict, or the same shape in YAML)::

    services:
      - id: "2555417777820"
        token: "svc-token"            # service_token accepted for this service
        provider_key: "pk"            # optional, deprecated credential
        backend_version: 1            # 1 = user_key, 2 = app_id [+ app_key], oauth
        state: active                 # or suspended -> 409 service_not_active
        metrics: {hits: {}, search: {parent: hits}}
        plans:
          basic: {name: Basic, limits: {hits: {minute: 100, day: 10000}, search: {minute: 10}}}
          unlimited: {}
        applications:
          - {user_key: "demo-key", plan: basic}
          - {app_id: "a1", app_keys: ["s1"], plan: basic, state: active, redirect_url: "https://x/cb"}

Run standalone: `python -m proxy.emulator --config FILE.yaml [--host 127.0.0.1] [--port 3001]`.

Control API (JSON; never recorded, never delayed, never down):
    GET  /_emulator/calls[?endpoint=authrep]      recorded protocol calls
    GET  /_emulator/reported                      accepted transactions (the newest max_records)
    GET  /_emulator/totals[?source=report&service_id=&app=]   exact sums of accepted usage per metric
    GET  /_emulator/usage?service_id=&app=&metric=&period=   -> {"value": N}
    GET  /_emulator/errors?service_id=            the per-service report error list (newest first)
    GET  /_emulator/state, POST /_emulator/state  {"down": "error"|"refuse"|null, "delay": 0.5, "for": 2.0}
    POST /_emulator/reset                         back to the config's state, records cleared
    POST /_emulator/portal/{service_id}/proxy_rules   add a mapping rule (JSON proxy rule) to the proxy config
Admin portal (proxy configs for configuration from 3scale): see proxy.emulator.portal; `services[].proxy`
is APIcast's proxy object of a service, `portal: {access_token: ...}` the token it accepts.
    POST /_emulator/applications/{service_id}     add an application (JSON spec as in the config)
    DELETE /_emulator/applications/{service_id}/{app}
"down": "refuse" through the control API closes the very socket it is asked on, so nothing can undo it
through that API: it takes effect just after the answer is sent, and comes back by itself only when
"for" (seconds) is given. "error" (503 to every protocol call) is the useful mode there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .params import Params, parse
from .portal import Portal
from .protocol import (
    CONTENT_TYPE,
    Extensions,
    ProtocolError,
    authorize,
    check_report,
    error_entry,
    process_batch,
)
from .records import RecordLog, Totals
from .state import APP_STATES, PERIODS, App, Counters, Service, Usage, load_services, make_app

__all__ = ["Emulator", "RecordedCall", "main"]

BACKEND_VERSION = "3.4.3"
MAX_ERRORS = 1000
MAX_RECORDS = 10_000
DOWN_MODES = ("error", "refuse")

_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/transactions/authorize.xml"): "authorize",
    ("GET", "/transactions/authrep.xml"): "authrep",
    ("GET", "/transactions/oauth_authorize.xml"): "oauth_authorize",
    ("GET", "/transactions/oauth_authrep.xml"): "oauth_authrep",
    ("POST", "/transactions.xml"): "report",
    ("GET", "/status"): "status",
    ("GET", "/check.txt"): "check",
    ("HEAD", "/available"): "available",
}
_AUTH_ENDPOINTS = ("authorize", "authrep", "oauth_authorize", "oauth_authrep")


@dataclass
class RecordedCall:
    """One request to a protocol endpoint, as it arrived, and the status it was answered with."""

    endpoint: str
    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    status: int
    at: float


def _endpoint(method: str, path: str) -> str:
    """The endpoint name a request is recorded under (HEAD counts as GET, as in Sinatra)."""
    if method == "OPTIONS":
        return "options"
    name = _ROUTES.get((method, path))
    if name is None and method == "HEAD":
        name = _ROUTES.get(("GET", path))
    return name or "unknown"


def _xml(status: int, body: str = "", headers: Mapping[str, str] | None = None) -> web.Response:
    """A protocol response: always the 3scale content type, whatever the body."""
    response = web.Response(status=status, body=body.encode(), headers=dict(headers or {}))
    response.content_type = CONTENT_TYPE
    return response


class Emulator:
    """An in-memory 3scale backend; see the module docstring for the config and the control API."""

    def __init__(self, config: Mapping[str, Any], *, max_records: int = MAX_RECORDS) -> None:
        self._config: dict[str, Any] = copy.deepcopy(dict(config))
        self._services: dict[str, Service] = load_services(self._config)
        self.portal = Portal(self._config)
        """The admin portal's proxy-config endpoints (proxy.emulator.portal): set_proxy, remove, fault."""
        self._counters = Counters()
        self._errors: dict[str, list[dict[str, str]]] = {}
        self.calls: RecordLog[RecordedCall] = RecordLog(max_records)
        """The newest `max_records` protocol calls, oldest first (`call_count` counts them all)."""
        self.reported: RecordLog[dict[str, Any]] = RecordLog(max_records)
        """The newest `max_records` accepted transactions, in order: `{service_id, app, usage: {metric: N or
        "#N"}, timestamp, source}` with `source` "report" or "authrep"; a dropped batch adds nothing.
        `reported_totals` sums all of them, however many were dropped from here."""
        self._call_counts: Counter[str] = Counter()
        self._totals = Totals()
        self.delay: float = 0.0
        self.clock: Callable[[], float] = time.time
        """Where "now" comes from (tests pin it); counters, windows and timestamp checks use it."""
        self._down: str | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._restore: asyncio.TimerHandle | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> Emulator:
        """An emulator configured from a YAML file of the same shape as the config dict."""
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(config, Mapping):
            raise ValueError(f"{path}: the emulator config must be a mapping")
        return cls(config)

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:41234` (valid after `start`, and while down)."""
        if self._runner is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def make_app(self) -> web.Application:
        """The aiohttp application: control routes first, then every other path is protocol."""
        app = web.Application(client_max_size=8 * 1024 * 1024)
        control: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/_emulator/calls", self._ctl_calls),
            ("GET", "/_emulator/reported", self._ctl_reported),
            ("GET", "/_emulator/totals", self._ctl_totals),
            ("GET", "/_emulator/usage", self._ctl_usage),
            ("GET", "/_emulator/errors", self._ctl_errors),
            ("GET", "/_emulator/state", self._ctl_get_state),
            ("POST", "/_emulator/state", self._ctl_set_state),
            ("POST", "/_emulator/reset", self._ctl_reset),
            ("POST", "/_emulator/applications/{service_id}", self._ctl_add_app),
            ("DELETE", "/_emulator/applications/{service_id}/{app}", self._ctl_delete_app),
            ("POST", "/_emulator/portal/{service_id}/proxy_rules", self._ctl_add_rule),
            ("*", "/_emulator/{tail:.*}", self._ctl_not_found),
        ]
        for method, path, handler in [*control, *self.portal.routes()]:
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._protocol)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already started")
        self._runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self._host, self._port = host, port
        await self._listen()
        return self.url

    async def stop(self) -> None:
        """Stop listening and drop connections; the state stays readable."""
        self._cancel_restore()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def _listen(self) -> None:
        """Open the listening socket (again: `refuse` comes back on the same port)."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await self._site.start()
        self._port = self._site.port

    async def _unlisten(self) -> None:
        """Close the listening socket and every open connection, so clients see connection errors."""
        assert self._runner is not None
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner.server is not None:
            for connection in self._runner.server.connections:
                connection.force_close()

    # ---- fault injection ----

    @property
    def down(self) -> str | None:
        """The current fault: None, "error" or "refuse"."""
        return self._down

    async def set_down(self, mode: str | None) -> None:
        """ "error": every protocol call answers 503 (empty); "refuse": stop listening; None: back."""
        if mode is not None and mode not in DOWN_MODES:
            raise ValueError(f"down mode must be one of {DOWN_MODES} or None, not {mode!r}")
        self._cancel_restore()
        if mode == "refuse" and self._down != "refuse":
            if self._runner is None:
                raise RuntimeError('"refuse" needs an emulator started with start()')
            await self._unlisten()
        elif mode != "refuse" and self._down == "refuse":
            await self._listen()
        self._down = mode

    def _cancel_restore(self) -> None:
        """Forget a pending automatic `set_down(None)` of the control API's "for"."""
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- records and state ----

    def calls_to(self, endpoint: str) -> list[RecordedCall]:
        """The recorded calls of one endpoint ("authorize", "authrep", "report", "status", …)."""
        return [call for call in self.calls if call.endpoint == endpoint]

    def call_count(self, endpoint: str | None = None) -> int:
        """How many protocol calls (of one endpoint, or all) arrived since the last reset: exact, unbounded."""
        return sum(self._call_counts.values()) if endpoint is None else self._call_counts[endpoint]

    def call_counts(self) -> dict[str, int]:
        """Protocol calls per endpoint since the last reset: exact, unbounded."""
        return dict(self._call_counts)

    def reported_totals(
        self, app: str | None = None, *, service_id: str | None = None, source: str = "report"
    ) -> dict[str, int]:
        """Exact sums per metric of the usage 3scale accepted from `source` ("report" or "authrep"), as the
        transactions said it (`app` is the user_key or app_id they named); never affected by `max_records`."""
        return self._totals.select(source, None if service_id is None else str(service_id), app)

    def reset_calls(self) -> None:
        """Forget the recorded calls and their counts."""
        self.calls.clear()
        self._call_counts.clear()

    def reset(self) -> None:
        """Back to the config's services and applications, zero counters, empty records, no faults
        (except "refuse", which only `set_down(None)` can undo)."""
        self._services = load_services(self._config)
        self.portal.load(self._config)
        self._counters.clear()
        self._errors.clear()
        self.reset_calls()
        self.reported.clear()
        self._totals.clear()
        self.delay = 0.0
        if self._down == "error":
            self._down = None

    def _service(self, service_id: str) -> Service:
        """A configured service, or KeyError."""
        try:
            return self._services[str(service_id)]
        except KeyError:
            raise KeyError(f"unknown service {service_id!r}") from None

    def _app(self, service_id: str, app: str) -> App:
        """An existing application named by its user_key or app_id, or KeyError."""
        found = self._service(service_id).resolve(str(app))
        if found is None:
            raise KeyError(f"unknown application {app!r} in service {service_id!r}")
        return found

    def usage(self, service_id: str, app: str, metric: str, period: str = "eternity") -> int:
        """The counter of the period window containing now; `app` is the user_key or app_id."""
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r}")
        found = self._service(service_id).resolve(str(app))
        ident = found.ident if found is not None else str(app)
        return self._counters.get(str(service_id), ident, metric, period, self.clock())

    def report_errors(self, service_id: str) -> list[dict[str, str]]:
        """The service's report errors, newest first (code, message, timestamp), at most 1000."""
        return list(self._errors.get(str(service_id), []))

    def delete_application(self, service_id: str, app: str) -> None:
        """Delete an application: it becomes unknown to authorizations and poisons report batches."""
        found = self._app(service_id, app)
        self._service(service_id).apps.remove(found)

    def add_application(self, service_id: str, spec: Mapping[str, Any]) -> None:
        """Add an application from a config-style spec (`{user_key|app_id, app_keys, plan, state}`)."""
        service = self._service(service_id)
        app = make_app(service, spec)
        if service.resolve(app.ident) is not None:
            raise ValueError(f"application {app.ident!r} already exists in service {service_id!r}")
        service.apps.append(app)

    def set_app_state(self, service_id: str, app: str, state: str) -> None:
        """Suspend ("suspended") or resume ("active") an application."""
        if state not in APP_STATES:
            raise ValueError(f"application state must be one of {APP_STATES}")
        self._app(service_id, app).state = state

    def set_service_state(self, service_id: str, state: str) -> None:
        """Suspend or resume a whole service (anything but "active" gives service_not_active)."""
        self._service(service_id).state = state

    def _accept(
        self,
        service: Service,
        app: App,
        name: str,
        usage: Mapping[str, Usage],
        processed: Mapping[str, Usage],
        at: float,
        source: str,
    ) -> None:
        """Count one accepted transaction and remember it as reaching 3scale."""
        self._counters.apply(service.id, app.ident, processed, at)
        said = {metric: value.render() for metric, value in usage.items()}
        self.reported.append({"service_id": service.id, "app": name, "timestamp": at, "source": source, "usage": said})
        self._totals.add(source, service.id, name, said)

    def _record_error(self, service_id: str, error: ProtocolError, now: float) -> None:
        """Add to the per-service error list, newest first, capped like apisonator's."""
        errors = self._errors.setdefault(service_id, [])
        errors.insert(0, error_entry(error, now))
        del errors[MAX_ERRORS:]

    # ---- the protocol ----

    async def _protocol(self, request: web.Request) -> web.StreamResponse:
        """Every non-control request: recorded, delayed, failed while down, else answered."""
        at = self.clock()
        endpoint = _endpoint(request.method, request.path)
        params = await _read_params(request)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        if self._down == "error":
            response: web.StreamResponse = web.Response(status=503)
        else:
            response = await self._answer(endpoint, request, params)
        response.headers["Access-Control-Allow-Origin"] = "*"
        self._call_counts[endpoint] += 1
        self.calls.append(
            RecordedCall(
                endpoint=endpoint,
                method=request.method,
                path=request.path,
                params=list(params.pairs),
                headers=dict(request.headers),
                status=response.status,
                at=at,
            )
        )
        return response

    async def _answer(self, endpoint: str, request: web.Request, params: Params) -> web.StreamResponse:
        """Dispatch to the endpoint's handler."""
        if endpoint in _AUTH_ENDPOINTS:
            return self._authorize(endpoint, request, params)
        if endpoint == "report":
            return self._report(request, params)
        if endpoint == "status":
            body = json.dumps({"status": "ok", "version": {"backend": BACKEND_VERSION}}, separators=(",", ":"))
            return web.Response(text=body, content_type="application/json")
        if endpoint == "check":
            return web.Response(text="ok", content_type="text/plain")
        if endpoint == "available":
            return _xml(200)
        if endpoint == "options":
            requested = request.headers.get("Access-Control-Request-Headers", "3scale-options")
            return _xml(
                204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, HEAD, OPTIONS",
                    "Access-Control-Allow-Headers": requested,
                },
            )
        return _xml(404)

    def _authorize(self, endpoint: str, request: web.Request, params: Params) -> web.Response:
        """authorize/authrep (and oauth_*); an authorized authrep with usage counts it at once."""
        ext = Extensions.parse(request.headers.get("3scale-options"), params.tree.get("no_body"))
        now = self.clock()
        try:
            result = authorize(self._services, self._counters, params, ext, endpoint, now)
        except ProtocolError as error:
            return _xml(error.status, "" if "no_body" in ext else error.xml())
        if result.report and result.reported_usage and result.service and result.app:
            name = params.text("app_id") or params.text("user_key") or result.app.ident
            self._accept(result.service, result.app, name, result.reported_usage, result.report, now, "authrep")
        return _xml(result.status, result.body, result.headers)

    def _report(self, request: web.Request, params: Params) -> web.Response:
        """POST /transactions.xml: synchronous checks, 202, then the batch job (all or nothing)."""
        try:
            service = check_report(self._services, params, request.headers.get("Content-Type"))
        except ProtocolError as error:
            return _xml(error.status, error.xml())
        now = self.clock()
        flat = "flat_usage" in Extensions.parse(request.headers.get("3scale-options"))
        try:
            batch = process_batch(service, params.tree["transactions"], flat, now)
        except ProtocolError as error:
            self._record_error(service.id, error, now)
        else:
            for tx in batch:
                self._accept(service, tx.app, tx.name, tx.usage, tx.processed, tx.timestamp, "report")
        return _xml(202)

    # ---- the control API ----

    async def _ctl_calls(self, request: web.Request) -> web.Response:
        """GET /_emulator/calls[?endpoint=…]."""
        endpoint = request.query.get("endpoint")
        calls = self.calls if endpoint is None else self.calls_to(endpoint)
        return web.json_response([asdict(call) for call in calls])

    async def _ctl_reported(self, request: web.Request) -> web.Response:
        """GET /_emulator/reported."""
        return web.json_response(list(self.reported))

    async def _ctl_totals(self, request: web.Request) -> web.Response:
        """GET /_emulator/totals[?source=report&service_id=&app=]."""
        query = request.query
        totals = self.reported_totals(
            query.get("app"), service_id=query.get("service_id"), source=query.get("source", "report")
        )
        return web.json_response(totals)

    async def _ctl_usage(self, request: web.Request) -> web.Response:
        """GET /_emulator/usage?service_id=&app=&metric=&period=."""
        query = request.query
        missing = [name for name in ("service_id", "app", "metric") if not query.get(name)]
        if missing:
            return _json_error(400, f"missing query parameters: {', '.join(missing)}")
        try:
            value = self.usage(query["service_id"], query["app"], query["metric"], query.get("period", "eternity"))
        except (KeyError, ValueError) as exc:
            return _json_error(404, str(exc))
        return web.json_response({"value": value})

    async def _ctl_errors(self, request: web.Request) -> web.Response:
        """GET /_emulator/errors?service_id=."""
        return web.json_response(self.report_errors(request.query.get("service_id", "")))

    async def _ctl_get_state(self, request: web.Request) -> web.Response:
        """GET /_emulator/state."""
        return web.json_response({"down": self._down, "delay": self.delay})

    async def _ctl_set_state(self, request: web.Request) -> web.Response:
        """POST /_emulator/state {"down", "delay", "for"}: see the module docstring about "refuse"."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            delay = float(body.get("delay", self.delay))
            duration = body.get("for")
            duration = None if duration is None else float(duration)
            mode = body.get("down", self._down)
            if mode is not None and mode not in DOWN_MODES:
                raise ValueError(f"down must be one of {DOWN_MODES} or null")
            if delay < 0 or (duration is not None and duration <= 0):
                raise ValueError("delay must be >= 0 and for > 0")
            if mode == "refuse" and self._runner is None:
                raise ValueError('"refuse" needs an emulator started with start()')
        except (ValueError, TypeError) as exc:
            return _json_error(400, str(exc))
        self.delay = delay
        if mode == "refuse" and self._down != "refuse":
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: self._spawn(self._go_down("refuse", duration)))
        else:
            await self._go_down(mode, duration)
        return web.json_response({"down": mode, "delay": self.delay})

    async def _go_down(self, mode: str | None, duration: float | None) -> None:
        """set_down, then (with `duration`) come back by itself."""
        await self.set_down(mode)
        if mode is not None and duration is not None:
            loop = asyncio.get_running_loop()
            self._restore = loop.call_later(duration, lambda: self._spawn(self.set_down(None)))

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        """POST /_emulator/reset."""
        self.reset()
        return web.json_response({"down": self._down, "delay": self.delay})

    async def _ctl_add_app(self, request: web.Request) -> web.Response:
        """POST /_emulator/applications/{service_id} with a JSON application spec."""
        try:
            self.add_application(request.match_info["service_id"], await request.json())
        except KeyError as exc:
            return _json_error(404, str(exc))
        except (ValueError, TypeError) as exc:
            return _json_error(400, str(exc))
        return web.json_response({"ok": True}, status=201)

    async def _ctl_add_rule(self, request: web.Request) -> web.Response:
        """POST /_emulator/portal/{service_id}/proxy_rules with a JSON proxy rule: a new latest proxy config
        with the rule added last (as a portal user adding a mapping rule and promoting the config)."""
        sid = request.match_info["service_id"]
        try:
            rule = await request.json()
            if not isinstance(rule, dict):
                raise TypeError("a proxy rule is a JSON object")
            proxy = self.portal.proxy(sid)
        except KeyError:
            return _json_error(404, f"unknown service {sid!r}")
        except (ValueError, TypeError) as exc:
            return _json_error(400, str(exc))
        rules = proxy.get("proxy_rules") or []
        rules.append({"delta": 1, "last": False, **rule, "position": len(rules) + 1})
        proxy["proxy_rules"] = rules
        self.portal.set_proxy(sid, proxy)
        return web.json_response({"ok": True, "rules": len(rules)}, status=201)

    async def _ctl_delete_app(self, request: web.Request) -> web.Response:
        """DELETE /_emulator/applications/{service_id}/{app}."""
        try:
            self.delete_application(request.match_info["service_id"], request.match_info["app"])
        except KeyError as exc:
            return _json_error(404, str(exc))
        return web.Response(status=204)

    async def _ctl_not_found(self, request: web.Request) -> web.Response:
        """Any other /_emulator/ path: a JSON 404, never a recorded protocol call."""
        return _json_error(404, f"no control endpoint {request.method} {request.path}")


def _json_error(status: int, message: str) -> web.Response:
    """A control-API error."""
    return web.json_response({"error": message}, status=status)


async def _read_params(request: web.Request) -> Params:
    """Query string plus form body (urlencoded, multipart, or a POST without Content-Type), like Rack."""
    query = request.raw_path.partition("?")[2].encode("utf-8", "surrogateescape")
    media_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        try:
            form = await request.post()
        except ValueError:
            params = parse(query)
            params.error = "request contains syntax errors, should not be repeated without modification"
            return params
        return parse(query, form=[(key, value) for key, value in form.items() if isinstance(value, str)])
    if media_type == "application/x-www-form-urlencoded" or (not media_type and request.method == "POST"):
        return parse(query, body=await request.read())
    return parse(query)


async def _serve(config: Path, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM, printing the URL once listening."""
    emulator = Emulator.from_yaml(config)
    print(await emulator.start(host, port), flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m proxy.emulator --config FILE.yaml [--host H] [--port P]`."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.emulator", description="A 3scale Service Management API emulator."
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML file: services, plans, applications")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.config, args.host, args.port))
