"""The chain a request passes: route → credentials → mapping → authorize → record → forward.

Each step lives in its own module; this one only composes them, answers their errors as JSON, and writes
the request's metrics and its one access-log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import credentials as creds_step
from .authorizer import Authorizer
from .clock import Clock, system_clock
from .config import GatewaySettings, ServiceSettings
from .decisions import AuthDecision
from .forward import CLIENT_CLOSED, Forwarded, forward, forward_now, upstream_headers, upstream_url
from .http.client import H1Transport
from .http.server import Request
from .limits import Limiter, LimitResult
from .logs import ACCESS_LOGGER
from .mapping import Args, Mapper, query_args
from .metrics import Metrics
from .paths import BadPath, mapping_uri
from .redact import mask
from .responses import Reply, json_error, service_error
from .routing import Router
from .threescale.models import AppCredentials
from .transport import HeaderBlock, Transport
from .usage import UsageRecorder

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

_NO_ARGS: Args = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServiceRuntime:
    """A service's settings with what is derived from them once: the compiled mapper and names to strip."""

    settings: ServiceSettings
    mapper: Mapper
    strip_headers: tuple[str, ...]
    strip_query: tuple[str, ...]

    @classmethod
    def build(cls, settings: ServiceSettings) -> ServiceRuntime:
        names = creds_step.names_to_strip(settings.credentials) if settings.strip_credentials else ()
        in_query = settings.credentials.location == "query"
        return cls(
            settings=settings,
            mapper=Mapper(settings.mapping_rules),
            strip_headers=() if in_query else names,
            strip_query=names if in_query else (),
        )


_Prepared = tuple[ServiceSettings, ServiceRuntime, AppCredentials, Mapping[str, int]]


@dataclass(slots=True)
class _Outcome:
    """What the access log and metrics need to know about one request."""

    service: str = "-"
    status: int = 500
    credentials: AppCredentials | None = None
    cache: str | None = None
    upstream_seconds: float | None = None
    error: str | None = None
    extra_headers: Mapping[str, str] | None = None  # added to an answer of our own (429's RateLimit headers)


class Pipeline:
    """Handles every proxied request; owns no I/O resources itself (app.py builds and closes them)."""

    def __init__(
        self,
        services: Sequence[ServiceSettings],
        authorizer: Authorizer,
        limiter: Limiter,
        usage: UsageRecorder,
        transport: Transport,
        metrics: Metrics,
        gateway: GatewaySettings,
        *,
        access_log_enabled: bool = True,
        clock: Clock = system_clock,
    ) -> None:
        self._router = Router(services)
        self._services = {s.id: ServiceRuntime.build(s) for s in services}
        self.service_count = len(services)
        self._authorizer = authorizer
        self._limiter = limiter
        self._usage = usage
        self._transport = transport
        self._metrics = metrics
        self._gateway = gateway
        self._access_log = access_log_enabled
        self._clock = clock
        self._record = metrics.record_request
        self._quick = transport if isinstance(transport, H1Transport) else None  # forward_now needs its pool
        self.in_flight = 0  # requests being handled: shutdown waits for them
        self.idle = asyncio.Event()
        self.idle.set()

    def reconfigure(self, services: Sequence[ServiceSettings]) -> None:
        """Serve these services from the next request on (a reload). A request under way keeps the service
        and rules it was routed with: the router and the runtimes are replaced, never changed in place."""
        runtimes = {s.id: ServiceRuntime.build(s) for s in services}
        router = Router(services)
        self._services, self._router = runtimes, router
        self.service_count = len(services)

    async def handle(self, request: Request) -> None:
        """The listener's handler: every method, every path; answers on `request` itself."""
        outcome = _Outcome()
        started = time.perf_counter()
        self._enter()
        await self._complete(request, outcome, started, self._handle(request, outcome))

    def handle_now(self, request: Request) -> bool:
        """The listener's quick handler (bodiless requests): answers of our own, and the cached, allowed request
        with a kept-alive upstream connection idle, go through without a task; what must wait goes on in one
        from where it stopped. False, having done nothing, when the decision is not in this process."""
        outcome = _Outcome()
        started = time.perf_counter()
        prepared = self._prepare(request, outcome)
        if isinstance(prepared, Reply):
            self._enter()
            try:
                prepared.send(request, outcome.extra_headers)
            except Exception:
                self._internal_error(request, outcome)
            self._leave(request, outcome, started)
            return True
        service, runtime, credentials, usage = prepared
        decision = self._authorizer.allowed_now(service, credentials)
        if decision is None:
            return False
        self._enter()
        outcome.cache = "local"
        try:
            limit = self._limiter.check_now(service.id, credentials, decision, usage)
            if limit is None:  # the slices held here do not cover it: Redis is asked, in a task
                self._later(request, outcome, started, self._admitted(request, outcome, prepared, decision))
                return True
            if not limit.allowed:
                self._limited(service, limit, outcome).send(request, outcome.extra_headers)
                self._leave(request, outcome, started)
                return True
            self._usage.add(service.id, credentials, usage, self._clock())
            url, headers = self._upstream_request(request, service, runtime)
            quick = self._quick
            if quick is not None and forward_now(
                request,
                quick,
                url,
                headers,
                service.upstream_timeout,
                limit.headers,
                lambda forwarded: self._forwarded_now(request, outcome, started, forwarded),
            ):
                return True
            work = self._forward(request, outcome, url, headers, service.upstream_timeout, limit.headers)
            self._later(request, outcome, started, work)
        except Exception:
            self._internal_error(request, outcome)
            self._leave(request, outcome, started)
        return True

    def _enter(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def _leave(self, request: Request, outcome: _Outcome, started: float) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()
        self._finish(request, outcome, time.perf_counter() - started)

    def _later(
        self, request: Request, outcome: _Outcome, started: float, work: Coroutine[Any, Any, Reply | None]
    ) -> None:
        """handle_now's request goes on in a task; the client's going away cancels it, as for handle()."""
        task = asyncio.get_running_loop().create_task(self._complete(request, outcome, started, work))
        request.on_lost = task.cancel

    async def _complete(
        self, request: Request, outcome: _Outcome, started: float, work: Coroutine[Any, Any, Reply | None]
    ) -> None:
        try:
            reply = await work
            if reply is not None:
                reply.send(request, outcome.extra_headers)
        except asyncio.CancelledError:
            outcome.status = CLIENT_CLOSED
            outcome.error = "client_closed"
            raise
        except Exception:
            self._internal_error(request, outcome)
        finally:
            self._leave(request, outcome, started)

    def _internal_error(self, request: Request, outcome: _Outcome) -> None:
        log.exception("unexpected error while handling a request")
        self._metrics.errors.labels("internal").inc()
        outcome.status, outcome.error = 500, "internal_error"
        if request.started:
            request.abort()
        else:
            json_error(500, "internal_error", "The proxy failed to handle the request").send(request)

    def _prepare(self, request: Request, outcome: _Outcome) -> Reply | _Prepared:
        """Route, credentials and mapping (no waiting): the request's service and usage, or our answer."""
        service = self._router.route(request.host, request.path, request.headers)
        if service is None:
            outcome.status, outcome.error = 404, "no_service"
            return json_error(404, "no_service", "No service is configured for this host and path")
        outcome.service = service.id
        runtime = self._services[service.id]

        credentials = creds_step.extract(service.credentials, request.headers, request.query_string)
        if credentials is None:
            return self._error(service, "auth_missing", outcome)
        if not creds_step.well_formed(credentials):
            return self._error(service, "auth_failed", outcome, reason="credentials_malformed")
        outcome.credentials = credentials

        try:
            uri = mapping_uri(request.encoded_path)
        except BadPath as exc:  # nginx, in front of APIcast, answers these with 400 before anything else
            outcome.status, outcome.error = 400, "bad_request"
            return json_error(400, "bad_request", f"The request path is malformed: {exc}")
        mapper = runtime.mapper
        usage = mapper.usage(request.method, uri, query_args(request.query_string) if mapper.needs_query else _NO_ARGS)
        if usage is None:
            return self._error(service, "no_match", outcome)
        return service, runtime, credentials, usage

    async def _handle(self, request: Request, outcome: _Outcome) -> Reply | None:
        """The answer of the proxy's own, or None when the upstream's has been sent."""
        prepared = self._prepare(request, outcome)
        if isinstance(prepared, Reply):
            return prepared
        service, _, credentials, _ = prepared
        result = await self._authorizer.authorize(service, credentials)
        outcome.cache = result.layer
        if not result.decision.allowed:
            return self._denied(service, result.decision, outcome)
        return await self._admitted(request, outcome, prepared, result.decision)

    async def _admitted(
        self, request: Request, outcome: _Outcome, prepared: _Prepared, decision: AuthDecision
    ) -> Reply | None:
        """An authorized request: the plan's limits, then its usage is counted and it goes upstream."""
        service, runtime, credentials, usage = prepared
        limit = await self._limiter.check(service.id, credentials, decision, usage)
        if not limit.allowed:
            return self._limited(service, limit, outcome)

        self._usage.add(service.id, credentials, usage, self._clock())
        url, headers = self._upstream_request(request, service, runtime)
        await self._forward(request, outcome, url, headers, service.upstream_timeout, limit.headers)
        return None

    def _upstream_request(
        self, request: Request, service: ServiceSettings, runtime: ServiceRuntime
    ) -> tuple[str, HeaderBlock]:
        url = upstream_url(service.upstream, request.raw_path, runtime.strip_query)
        source_ip = request.headers.get(self._gateway.source_ip_header) if self._gateway.source_ip_header else None
        return url, upstream_headers(request, runtime.strip_headers, source_ip)

    async def _forward(
        self,
        request: Request,
        outcome: _Outcome,
        url: str,
        headers: HeaderBlock,
        upstream_timeout: float,
        extra_headers: Mapping[str, str] | None,
    ) -> None:
        forwarded = await forward(request, self._transport, url, headers, upstream_timeout, extra_headers)
        self._forwarded(outcome, forwarded)

    def _forwarded(self, outcome: _Outcome, forwarded: Forwarded) -> None:
        outcome.status = forwarded.status
        outcome.upstream_seconds = forwarded.upstream_seconds
        outcome.error = forwarded.error
        if forwarded.error:
            self._metrics.errors.labels(forwarded.error).inc()

    def _forwarded_now(self, request: Request, outcome: _Outcome, started: float, forwarded: Forwarded | None) -> None:
        if forwarded is None:  # the client went away first: as handle() counts a cancelled request
            outcome.status, outcome.error = CLIENT_CLOSED, "client_closed"
        else:
            self._forwarded(outcome, forwarded)
        self._leave(request, outcome, started)

    def _limited(self, service: ServiceSettings, limit: LimitResult, outcome: _Outcome) -> Reply:
        """The limiter's denial: 429 with its RateLimit headers, or, for a metric the plan disables, APIcast's
        generic 403 (3scale's 409 with a limit of 0 is no rate limit to wait out)."""
        if limit.disabled:
            return self._error(service, "auth_failed", outcome, reason="metric_disabled")
        self._metrics.limited.labels(service.id, "plan").inc()
        outcome.extra_headers = limit.headers
        return self._error(service, "limits_exceeded", outcome)

    def _error(self, service: ServiceSettings, kind: str, outcome: _Outcome, **extra: str) -> Reply:
        reply = service_error(service, kind, **extra)
        outcome.status, outcome.error = reply.status, kind
        return reply

    def _denied(self, service: ServiceSettings, decision: AuthDecision, outcome: _Outcome) -> Reply:
        kind = decision.kind
        if kind == "limits_exceeded":
            self._metrics.limited.labels(service.id, "backend").inc()
        extra = {"reason": decision.code or kind}
        if decision.reason:
            extra["detail"] = decision.reason
        return self._error(service, kind, outcome, **extra)

    def _finish(self, request: Request, outcome: _Outcome, seconds: float) -> None:
        stage = request.headers.get(self._gateway.stage_header, "") if self._gateway.stage_header else ""
        self._record((outcome.service, request.method, outcome.status, stage), seconds, outcome.upstream_seconds)
        if not self._access_log or not access_log.isEnabledFor(logging.INFO):
            return
        creds = outcome.credentials
        fields = {
            "service": outcome.service,
            "method": request.method,
            "path": request.path,
            "status": outcome.status,
            "key": mask(creds.identity) if creds else None,
            "total_ms": round(seconds * 1000, 3),
            "upstream_ms": round(outcome.upstream_seconds * 1000, 3) if outcome.upstream_seconds is not None else None,
            "cache": outcome.cache,
            "trace_id": request.headers.get("X-Amzn-Trace-Id"),
            "request_id": request.headers.get(self._gateway.request_id_header)
            if self._gateway.request_id_header
            else None,
            "stage": stage or None,
            "api_key_id": request.headers.get(self._gateway.api_key_id_header)
            if self._gateway.api_key_id_header
            else None,
            "client": (request.headers.get(self._gateway.source_ip_header) if self._gateway.source_ip_header else None)
            or request.remote,
        }
        if outcome.error:
            fields["error"] = outcome.error
        # makeRecord + handle: what .info() does, without walking the stack for a caller nobody reads
        access_log.handle(
            access_log.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None, None, {"fields": fields})
        )
