"""The 3scale Service Management API's decisions and XML, as apisonator makes them (see THREESCALE.md).

Part of `proxy.emulator`: the order of checks, the validators, the status and error documents,
limit headers, and the checks of a report batch. Pure functions over the emulator's model; no aiohttp.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from .params import Params, parse_timestamp
from .state import PERIODS, App, Counters, Limit, Service, Usage, stored_values, window

CONTENT_TYPE = "application/vnd.3scale-v2.0+xml"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
TIME_FORMAT = "%Y-%m-%d %H:%M:%S +0000"
MAX_AGE = 86400
MAX_AHEAD = 3600
REPORT_CONTENT_TYPES = ("", "application/x-www-form-urlencoded", "multipart/form-data")

_USAGE_VALUE = re.compile(r"\s*#?[0-9]+\s*")


class ProtocolError(Exception):
    """A response with an `<error>` document (or, with `code=None`, an empty body), as apisonator sends."""

    def __init__(self, status: int, code: str | None = None, message: str = "") -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def xml(self) -> str:
        """The error document, or '' for the bare 403 of a malformed `usage`."""
        if self.code is None:
            return ""
        return f'{XML_DECLARATION}<error code="{self.code}">{_text(self.message)}</error>'


@dataclass(frozen=True)
class Denial:
    """A failed validator: a 409 whose code only the `rejection_reason_header` extension reveals."""

    code: str
    message: str


@dataclass(frozen=True)
class Extensions:
    """The `3scale-options` header (URL-encoded `k=v&…`) plus the deprecated `no_body` query parameter."""

    flags: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, header: str | None, no_body_param: Any = None) -> Extensions:
        """Flags whose value is `1` (any value but 0/false for `no_body`)."""
        flags = set()
        for key, value in parse_qsl(header or "", keep_blank_values=True):
            if value == "1" or (key == "no_body" and value not in ("0", "false")):
                flags.add(key)
        if no_body_param is not None and no_body_param not in ("0", "false"):
            flags.add("no_body")
        return cls(frozenset(flags))

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags


@dataclass
class AuthContext:
    """Everything an authorize/authrep decision and its status document depend on."""

    service: Service
    app: App
    params: Params
    ext: Extensions
    now: float
    stored: dict[tuple[str, str], int]
    oauth: bool
    authrep: bool
    usage: dict[str, Usage] | None = None
    processed: dict[str, Usage] | None = None
    denial: Denial | None = None

    @property
    def authorized(self) -> bool:
        """Whether every validator passed."""
        return self.denial is None


@dataclass
class AuthResult:
    """The HTTP answer to authorize/authrep, and the usage an authorized authrep reports."""

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    service: Service | None = None
    app: App | None = None
    report: dict[str, Usage] | None = None
    reported_usage: dict[str, Usage] | None = None


@dataclass(frozen=True)
class Transaction:
    """A report transaction that passed the asynchronous checks."""

    app: App
    name: str
    usage: dict[str, Usage]
    processed: dict[str, Usage]
    timestamp: float


def authorize(
    services: Mapping[str, Service], counters: Counters, params: Params, ext: Extensions, endpoint: str, now: float
) -> AuthResult:
    """authorize / authrep / oauth_*: the checks of THREESCALE.md §1 in order; raises ProtocolError."""
    if params.error is not None:
        raise ProtocolError(400, "bad_request", params.error)
    if params.bad_utf8:
        raise ProtocolError(422, "not_valid_data", "all data must be valid UTF8")
    service = find_service(services, params)
    if params.tree.get("user_id") is not None:
        raise ProtocolError(
            400,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        )
    raw_usage = params.tree.get("usage")
    if raw_usage is not None and not isinstance(raw_usage, dict):
        raise ProtocolError(403)
    oauth = endpoint.startswith("oauth_")
    app = find_app(service, params.text("app_id"), params.text("user_key"), oauth=oauth)
    if "no_body" in ext and raw_usage:
        _check_metrics(service, raw_usage)
    ctx = AuthContext(
        service=service,
        app=app,
        params=params,
        ext=ext,
        now=now,
        oauth=oauth,
        authrep=endpoint.endswith("authrep"),
        stored=stored_values(counters, service.id, app, now),
    )
    ctx.denial = _validate(ctx)
    return _answer(ctx)


def _answer(ctx: AuthContext) -> AuthResult:
    """Status code, headers and body of a decided authorization."""
    headers: dict[str, str] = {}
    if ctx.denial is not None and "rejection_reason_header" in ctx.ext:
        headers["3scale-rejection-reason"] = ctx.denial.code
    if "limit_headers" in ctx.ext and (ctx.denial is None or ctx.denial.code == "limits_exceeded"):
        headers.update(limit_headers(ctx))
    result = AuthResult(
        status=200 if ctx.authorized else 409,
        body="" if "no_body" in ctx.ext else status_xml(ctx),
        headers=headers,
        service=ctx.service,
        app=ctx.app,
    )
    if ctx.authrep and ctx.authorized and ctx.usage and any(u.is_set or u.value for u in ctx.usage.values()):
        result.report, result.reported_usage = ctx.processed, ctx.usage
    return result


def find_service(services: Mapping[str, Service], params: Params) -> Service:
    """The credentials check: `service_token` + `service_id`, or a `provider_key` [+ `service_id`]."""
    provider_key = params.text("provider_key")
    service_id = params.text("service_id")
    if provider_key is not None:
        return _by_provider_key(services, provider_key, service_id)
    token = params.text("service_token")
    if token is None:
        raise ProtocolError(403, "provider_key_or_service_token_required", "Provider key or service token are required")
    if service_id is None:
        raise ProtocolError(422, "service_id_missing", "Service ID is missing")
    service = services.get(service_id)
    if service is None or service.token is None or service.token != token:
        raise ProtocolError(
            403, "service_token_invalid", f'service token "{token}" or service id "{service_id}" is invalid'
        )
    return service


def _by_provider_key(services: Mapping[str, Service], key: str, service_id: str | None) -> Service:
    """Deprecated provider-key credentials, as apisonator's Service.load_with_provider_key!: without
    `service_id` the key's first service is its default; with one, the service is looked up first, then
    its key compared."""
    owned = [service for service in services.values() if service.provider_key == key]
    if service_id is None:
        if not owned:
            raise ProtocolError(
                403,
                "provider_key_invalid_or_service_missing",
                f'provider key "{key}" invalid and/or service ID missing',
            )
        return owned[0]
    service = services.get(service_id)
    if service is None:
        raise ProtocolError(403, "service_id_invalid", f'service id "{service_id}" is invalid')
    if service.provider_key != key:
        if not owned:
            raise ProtocolError(403, "provider_key_invalid", f'provider key "{key}" is invalid')
        raise ProtocolError(403, "service_id_invalid", f'service id "{service_id}" is invalid')
    return service


def find_app(service: Service, app_id: str | None, user_key: str | None, oauth: bool = False) -> App:
    """apisonator's application lookup (`with_app_id_from_params`), shared by auth and reports."""
    if oauth and app_id is None:
        raise ProtocolError(404, "application_not_found", "application id is missing")
    if app_id is not None and user_key is not None:
        raise ProtocolError(403, "authentication_error", "either app_id or user_key is allowed, not both")
    if app_id is not None:
        app = service.by_app_id(app_id)
        if app is None:
            raise ProtocolError(404, "application_not_found", f'application with id="{app_id}" was not found')
        return app
    if user_key is not None:
        app = service.by_user_key(user_key)
        if app is None:
            raise ProtocolError(403, "user_key_invalid", f'user key "{user_key}" is invalid')
        return app
    raise ProtocolError(404, "application_not_found", "application id is missing")


def parse_usage(service: Service, raw: Mapping[str, Any]) -> dict[str, Usage]:
    """Validate a `usage` hash: unknown metric → 404 metric_invalid, bad value → 403 usage_value_invalid."""
    usage: dict[str, Usage] = {}
    for name, value in raw.items():
        metric = name.strip()
        if metric not in service.metrics:
            raise ProtocolError(404, "metric_invalid", f'metric "{metric}" is invalid')
        if not isinstance(value, str) or not _USAGE_VALUE.fullmatch(value):
            raise _bad_value(metric, value)
        text = value.strip()
        usage[metric] = Usage(int(text.lstrip("#")), is_set=text.startswith("#"))
    return usage


def _check_metrics(service: Service, raw: Mapping[str, Any]) -> None:
    """With `no_body`, apisonator loads only the named metrics' limits, so unknown names fail early."""
    for name in raw:
        if name.strip() not in service.metrics:
            raise ProtocolError(404, "metric_invalid", f'metric "{name.strip()}" is invalid')


def _bad_value(metric: str, value: Any) -> ProtocolError:
    """usage_value_invalid, with apisonator's two message templates."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ProtocolError(403, "usage_value_invalid", f'usage value for metric "{metric}" can not be empty')
    return ProtocolError(403, "usage_value_invalid", f'usage value "{value}" for metric "{metric}" is invalid')


def propagate(service: Service, usage: Mapping[str, Usage], flat: bool) -> dict[str, Usage]:
    """Add each metric's usage to its ancestors (a set `#N` sets them), unless `flat_usage` is on."""
    processed = dict(usage)
    if flat:
        return processed
    for metric, value in usage.items():
        for parent in service.ancestors(metric):
            if value.is_set:
                processed[parent] = value
            else:
                previous = processed.get(parent)
                base = previous.value if previous is not None and not previous.is_set else 0
                processed[parent] = Usage(base + value.value)
    return processed


# ---- validators: each returns a Denial, or None to let the next one run ----


def _validate(ctx: AuthContext) -> Denial | None:
    """Run the validators in apisonator's order; the first failure decides."""
    checks: list[Callable[[AuthContext], Denial | None]]
    if ctx.oauth:
        checks = [_oauth_setting, _oauth_key, _redirect_uri]
    elif ctx.service.backend_version == "oauth":  # an OIDC service on authorize/authrep: OIDC_VALIDATORS
        checks = [_oauth_key]
    else:
        checks = [_key]
    checks += [_app_state, _service_state, _limits]
    for check in checks:
        denial = check(ctx)
        if denial is not None:
            return denial
    return None


def _key_denial(app_key: Any) -> Denial:
    """application_key_invalid: a missing (None or empty) key, or a wrong one."""
    if app_key is None or app_key == "":
        return Denial("application_key_invalid", "application key is missing")
    return Denial("application_key_invalid", f'application key "{app_key}" is invalid')


def _key(ctx: AuthContext) -> Denial | None:
    """Key: v1 services never check keys; otherwise an app with keys needs one of them."""
    app_key = ctx.params.tree.get("app_key")
    if ctx.service.backend_version == "1" or not ctx.app.keys or app_key in ctx.app.keys:
        return None
    return _key_denial(app_key)


def _oauth_setting(ctx: AuthContext) -> Denial | None:
    """OauthSetting: oauth_* endpoints only work for `backend_version: oauth` services."""
    if ctx.service.backend_version == "oauth":
        return None
    return Denial("oauth_not_enabled", "oauth is not enabled")


def _oauth_key(ctx: AuthContext) -> Denial | None:
    """OauthKey: the app_key is optional, but one that is sent must be one of the app's (an empty one never
    is, and an app without keys has none to match)."""
    app_key = ctx.params.tree.get("app_key")
    if app_key is None or (app_key != "" and app_key in ctx.app.keys):
        return None
    return _key_denial(app_key)


def _redirect_uri(ctx: AuthContext) -> Denial | None:
    """RedirectURI: a sent `redirect_url`/`redirect_uri` must equal the app's (when it has one)."""
    for param in ("redirect_url", "redirect_uri"):
        sent = ctx.params.text(param)
        if sent is not None and ctx.app.redirect_url and sent != ctx.app.redirect_url:
            return Denial(f"{param}_invalid", f'{param} "{sent}" is invalid')
    return None


def _app_state(ctx: AuthContext) -> Denial | None:
    """State: only active applications are authorized."""
    return None if ctx.app.state == "active" else Denial("application_not_active", "application is not active")


def _service_state(ctx: AuthContext) -> Denial | None:
    """ServiceState: a suspended service authorizes nobody."""
    return None if ctx.service.state == "active" else Denial("service_not_active", "service is not active")


def _limits(ctx: AuthContext) -> Denial | None:
    """Limits: `stored + usage ≤ max` for the named metrics and ancestors, or `stored ≤ max` for all."""
    raw_usage = ctx.params.tree.get("usage")
    if raw_usage is not None:
        ctx.usage = parse_usage(ctx.service, raw_usage)
        ctx.processed = propagate(ctx.service, ctx.usage, "flat_usage" in ctx.ext)
    for limit in ctx.app.plan.limits:
        stored = ctx.stored[(limit.metric, limit.period)]
        if ctx.processed is None:
            value = stored
        elif limit.metric in ctx.processed:
            value = ctx.processed[limit.metric].apply_to(stored)
        else:
            continue
        if value > limit.max_value:
            return Denial("limits_exceeded", "usage limits are exceeded")
    return None


# ---- the status document and the limit headers ----


def status_xml(ctx: AuthContext) -> str:
    """The `<status>` document, compact, in the element order of THREESCALE.md §2."""
    parts = [XML_DECLARATION, "<status>"]
    if ctx.denial is None:
        parts.append("<authorized>true</authorized>")
    else:
        parts.append(f"<authorized>false</authorized><reason>{ctx.denial.message}</reason>")
    if ctx.oauth:
        parts.append(_application_xml(ctx))
    parts.append(f"<plan>{_text(ctx.app.plan.name)}</plan>")
    limits = ctx.app.plan.limits
    if limits:
        parts.append("<usage_reports>")
        parts.extend(_usage_report_xml(ctx, limit) for limit in limits)
        parts.append("</usage_reports>")
    if "list_app_keys" in ctx.ext:
        parts.append(_app_keys_xml(ctx))
    if "hierarchy" in ctx.ext:
        parts.append("<hierarchy>")
        parts.extend(
            f"<metric name={_attr(limit.metric)} children={_attr(' '.join(ctx.service.children(limit.metric)))}/>"
            for limit in limits
        )
        parts.append("</hierarchy>")
    parts.append("</status>")
    return "".join(parts)


def _application_xml(ctx: AuthContext) -> str:
    """oauth_* only: the app's id, first key and redirect URL (named as the request named it)."""
    tag = "redirect_uri" if ctx.params.text("redirect_uri") is not None else "redirect_url"
    key = ctx.app.keys[0] if ctx.app.keys else ""
    return (
        f"<application><id>{_text(ctx.app.ident)}</id><key>{_text(key)}</key>"
        f"<{tag}>{_text(ctx.app.redirect_url)}</{tag}></application>"
    )


def _app_keys_xml(ctx: AuthContext) -> str:
    """The `list_app_keys` extension: at most 256 keys."""
    keys = "".join(f"<key id={_attr(key)}/>" for key in ctx.app.keys[:256])
    return f"<app_keys app={_attr(ctx.app.ident)} svc={_attr(ctx.service.id)}>{keys}</app_keys>"


def _usage_report_xml(ctx: AuthContext, limit: Limit) -> str:
    """One `<usage_report>`; `exceeded` looks at the stored value, `current_value` at the value after."""
    stored = ctx.stored[(limit.metric, limit.period)]
    exceeded = ' exceeded="true"' if stored > limit.max_value else ""
    head = f"<usage_report metric={_attr(limit.metric)} period={_attr(limit.period)}{exceeded}>"
    start, end = window(limit.period, ctx.now)
    period = ""
    if start is not None and end is not None:
        period = (
            f"<period_start>{start.strftime(TIME_FORMAT)}</period_start>"
            f"<period_end>{end.strftime(TIME_FORMAT)}</period_end>"
        )
    values = f"<max_value>{limit.max_value}</max_value><current_value>{_current_after(ctx, limit)}</current_value>"
    return f"{head}{period}{values}</usage_report>"


def _with_descendants(ctx: AuthContext, metric: str, start: int, usage: Mapping[str, Usage]) -> int:
    """Apply a metric's own usage and its descendants' to `start`: what an answer shows (current_value, the
    calls left). apisonator adds the descendants here even with `flat_usage`, which only keeps them off the
    stored counters."""
    own = usage.get(metric)
    value = own.apply_to(start) if own is not None else start
    for child in ctx.service.descendants(metric):
        if child in usage:
            value = usage[child].apply_to(value)
    return value


def _current_after(ctx: AuthContext, limit: Limit) -> int:
    """`current_value`: the stored value, plus this request's usage on an authorized authrep."""
    stored = ctx.stored[(limit.metric, limit.period)]
    if not (ctx.authrep and ctx.authorized and ctx.usage is not None):
        return stored
    return _with_descendants(ctx, limit.metric, stored, ctx.usage)


def _same_calls(ctx: AuthContext, limit: Limit) -> int:
    """How many more identical calls this limit allows; -1 when the call uses none of it."""
    remaining = max(limit.max_value - _current_after(ctx, limit), 0)
    if remaining == 0:
        return 0
    per_call = _with_descendants(ctx, limit.metric, 0, ctx.usage) if ctx.usage else 0
    return remaining // per_call if per_call > 0 else -1


def limit_headers(ctx: AuthContext) -> dict[str, str]:
    """The `limit_headers` extension: the most constrained limit (ties: the longer period wins)."""
    candidates = ctx.app.plan.limits
    if ctx.usage:
        named = set(ctx.usage)
        for metric in ctx.usage:
            named.update(ctx.service.ancestors(metric))
        candidates = tuple(limit for limit in candidates if limit.metric in named)
    best: tuple[int, int, Limit] | None = None
    for limit in candidates:
        calls = _same_calls(ctx, limit)
        if calls >= 0 and (best is None or (calls, PERIODS.index(limit.period)) < best[:2]):
            best = (calls, PERIODS.index(limit.period), limit)
    if best is None:
        return {"3scale-limit-remaining": "-1", "3scale-limit-reset": "-1"}
    calls, _, limit = best
    _, end = window(limit.period, ctx.now)
    reset = -1 if end is None else math.ceil(end.timestamp() - ctx.now)
    return {
        "3scale-limit-remaining": str(calls),
        "3scale-limit-reset": str(reset),
        "3scale-limit-max-value": str(limit.max_value),
    }


# ---- reports ----


def check_report(services: Mapping[str, Service], params: Params, content_type: str | None) -> Service:
    """The synchronous checks of POST /transactions.xml (§4), in order; raises ProtocolError."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in REPORT_CONTENT_TYPES:
        raise ProtocolError(400, "content_type_invalid", f"invalid Content-Type: {content_type}")
    if params.error is not None:
        raise ProtocolError(400, "bad_request", params.error)
    service = find_service(services, params)
    if params.bad_utf8:
        raise ProtocolError(422, "not_valid_data", "all data must be valid UTF8")
    transactions = params.tree.get("transactions")
    if transactions is None or transactions == "" or transactions == {}:
        raise ProtocolError(400, "transactions_is_blank", "transactions parameter is blank")
    if not isinstance(transactions, dict) or any(isinstance(t, str | list) for t in transactions.values()):
        raise ProtocolError(400, "transactions_format_invalid", "transactions format is invalid")
    if any(t is None for t in transactions.values()):
        raise ProtocolError(400, "transactions_has_nil_transaction", "transactions has a nil transaction")
    if any(t.get("user_id") is not None for t in transactions.values()):
        raise ProtocolError(
            400,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        )
    return service


def process_batch(service: Service, transactions: Mapping[str, Any], flat: bool, now: float) -> list[Transaction]:
    """The asynchronous job: every transaction checked, or ProtocolError for the whole batch."""
    accepted: list[Transaction] = []
    for tx in transactions.values():
        raw_usage = tx.get("usage")
        if isinstance(raw_usage, dict) and raw_usage and _all_zero(raw_usage):
            continue  # Transactor.report drops these before the job: their application is never looked up
        app_id, user_key = _text_param(tx, "app_id"), _text_param(tx, "user_key")
        app = find_app(service, app_id, user_key)  # the job looks up every application, usage or not
        if not isinstance(raw_usage, dict) or not raw_usage:
            continue  # checked, and nothing to count
        usage = parse_usage(service, raw_usage)
        timestamp = parse_timestamp(tx.get("timestamp"), now)
        if timestamp < now - MAX_AGE:
            raise ProtocolError(
                409,
                "transaction_timestamp_too_old",
                f"reporting transactions older than {MAX_AGE} seconds is not allowed",
            )
        if timestamp > now + MAX_AHEAD:
            raise ProtocolError(
                409,
                "transaction_timestamp_too_new",
                f"reporting transactions more than {MAX_AHEAD} seconds in the future is not allowed",
            )
        accepted.append(
            Transaction(
                app=app,
                name=app_id or user_key or app.ident,
                usage=usage,
                processed=propagate(service, usage, flat),
                timestamp=timestamp,
            )
        )
    return accepted


def _all_zero(raw_usage: Mapping[str, Any]) -> bool:
    """Every delta is the literal "0" (apisonator compares `delta.to_s == '0'`: "00" and " 0" are not)."""
    return all(v == "0" for v in raw_usage.values())


def _text_param(tx: Mapping[str, Any], name: str) -> str | None:
    """A transaction's string field, empty meaning absent."""
    value = tx.get(name)
    return value if isinstance(value, str) and value != "" else None


def error_entry(error: ProtocolError, now: float) -> dict[str, str]:
    """An entry of the per-service error list (what `GET /internal/services/:id/errors` shows)."""
    return {
        "code": error.code or "",
        "message": error.message,
        "timestamp": datetime.fromtimestamp(now, UTC).strftime(TIME_FORMAT),
    }


def _text(value: str) -> str:
    """XML text escaping."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(value: str) -> str:
    """A double-quoted XML attribute value."""
    return '"' + _text(value).replace('"', "&quot;") + '"'
