"""The one configuration schema: YAML file, `${VAR}` interpolation, `PROXY_*` overrides, validation.

Every problem is collected and reported as `FILE: key.path: message` so an operator can fix them all at
once; values of secret keys are never echoed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml

from .eventloop import EventLoopChoice, uvloop_available
from .paths import pattern_regex
from .portal.apicast import entries_from_document

ENV_PREFIX = "PROXY_"
SECRET_KEYS = frozenset({"token", "password", "secret", "service_token", "portal_endpoint"})
LEASE_MARGIN = 1.0  # seconds a lease must outlast threescale.timeout: the renewal before a POST and its ack
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "ANY"})


class ConfigError(Exception):
    """Raised with every problem found; `str()` gives one `FILE: key: message` line per problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in problems))


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ThreescaleSettings:
    """Where the 3scale Service Management API is, and how long to wait for it."""

    backend_url: str = "https://su1.3scale.net"
    timeout: float = 5.0
    pool_size: int = 100
    portal_endpoint: str | None = field(default=None, repr=False)
    """`https://ACCESS_TOKEN@ACCOUNT-admin.3scale.net` (or THREESCALE_PORTAL_ENDPOINT): services from 3scale."""
    environment: Literal["production", "staging"] = "production"
    """Which of the portal's proxy configs to serve (or THREESCALE_DEPLOYMENT_ENV), as APIcast."""
    config_refresh: float = 300.0
    """Seconds between reloads from the portal (or APICAST_CONFIGURATION_CACHE)."""
    config_file: str | None = None
    """APIcast's JSON configuration file (or THREESCALE_CONFIG_FILE): services read from it at start."""


@dataclass(frozen=True)
class CacheSettings:
    """Authorization cache: TTLs per layer and what to do when 3scale cannot be reached."""

    mode: Literal["strict", "resilient", "allow"] = "resilient"
    ttl: float = 300.0
    negative_ttl: float = 30.0
    local_ttl: float = 2.0
    stale_ttl: float = 86400.0
    """How long after `ttl` a resilient proxy may still serve an entry while 3scale is down."""
    local_max_entries: int = 40_000
    """Decisions kept in process (least recently used dropped first), the negative segment included."""
    local_max_negative: int | None = None
    """Of those, at most this many denied keys (invalid, limited, 3scale down), kept apart so a flood of bad
    keys never evicts a good one; default a tenth of local_max_entries."""

    @property
    def negative_entries(self) -> int:
        """The negative segment's size: local_max_negative, or a tenth of local_max_entries (at least 1)."""
        if self.local_max_negative is not None:
            return self.local_max_negative
        return max(1, self.local_max_entries // 10)


@dataclass(frozen=True)
class ReportSettings:
    """Batched usage reporting to 3scale through the shared buffer in Redis."""

    interval: float = 5.0
    flush_to_redis_ms: int = 200
    max_batch: int = 250
    """Transactions per POST /transactions.xml (3scale drops a whole POST for one bad transaction)."""
    lease: float = 30.0
    """Seconds after which a batch left in flight by a dead replica is taken over (a live one renews it)."""
    batch_fields: int = 1000
    """Usage fields (application × metric × minute) one replica takes from the buffer as one batch."""
    verify_concurrency: int = 10
    """Applications re-authorized at once before a batch is reported."""
    max_pending_memory: int = 50_000
    """Usage entries (service, app, minute) kept in memory while Redis is unreachable."""
    backoff_max: float = 60.0


@dataclass(frozen=True)
class UpstreamSettings:
    """How the proxy talks to upstreams: which HTTP client, and its keep-alive pool per upstream origin."""

    transport: Literal["h1", "aiohttp"] = "h1"
    """h1 (default): proxy.http.client, asyncio protocols with the httptools C parser (a fraction of aiohttp's CPU
    per request); aiohttp: aiohttp's ClientSession, the reference both pass the same conformance suite against."""
    pool_size: int = 256
    """Connections kept per upstream origin; a burst beyond waits for one to come free."""
    keepalive_timeout: float = 30.0
    """Seconds an idle upstream connection is kept (keep it below the upstream's own idle timeout)."""


@dataclass(frozen=True)
class ShutdownSettings:
    """SIGTERM: stop being ready, keep accepting for drain_delay, finish, flush, report, exit within timeout."""

    drain_delay: float = 5.0
    timeout: float = 25.0


@dataclass(frozen=True)
class MatchSettings:
    """Which requests belong to a service: all given conditions must hold."""

    host: str | None = None
    hosts: list[str] = field(default_factory=list)
    """Any of these hosts (APIcast's `hosts`), as `host` matches one."""
    path_prefix: str = "/"
    header: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CredentialSettings:
    """Where the caller's credentials are: names of the header or query parameters, or Basic auth."""

    location: Literal["header", "query", "authorization"] = "header"
    user_key: str | None = None
    app_id: str | None = None
    app_key: str | None = None

    @property
    def scheme(self) -> Literal["user_key", "app_id"]:
        """user_key (3scale backend v1) unless app_id is configured (v2)."""
        return "app_id" if self.app_id else "user_key"


@dataclass(frozen=True)
class MappingRuleSettings:
    """One mapping rule: method + path pattern → metric and delta, as in 3scale's product config."""

    pattern: str
    method: str = "ANY"
    metric: str = "hits"
    delta: int = 1
    last: bool = False


@dataclass(frozen=True)
class ErrorSettings:
    """A configurable error answer, like APIcast's error_auth_failed & co; unset fields keep the default."""

    status: int | None = None
    message: str | None = None
    content_type: str | None = None
    """Set: the body is `message` as it is, with this Content-Type (APIcast's error_headers_*); else JSON."""


DEFAULT_ERRORS: dict[str, ErrorSettings] = {
    "auth_missing": ErrorSettings(401, "Authentication parameters missing"),
    "auth_failed": ErrorSettings(403, "Authentication failed"),
    "no_match": ErrorSettings(404, "No mapping rule matched"),
    "limits_exceeded": ErrorSettings(429, "Usage limit exceeded"),
    "backend_unavailable": ErrorSettings(503, "Authorization service unavailable"),
}


@dataclass(frozen=True)
class ServiceSettings:
    """A 3scale service (product) and the upstream it fronts."""

    id: str
    token: str = field(repr=False)
    upstream: str
    backend_url: str | None = None
    """This service's 3scale backend when it is not threescale.backend_url (APIcast's proxy.backend.endpoint)."""
    upstream_timeout: float = 28.0
    match: MatchSettings | None = None
    credentials: CredentialSettings = field(default_factory=lambda: CredentialSettings(user_key="x-api-key"))
    strip_credentials: bool = True
    mapping_rules: list[MappingRuleSettings] = field(
        default_factory=lambda: [MappingRuleSettings(pattern="/", method="ANY", metric="hits", delta=1)]
    )
    errors: dict[str, ErrorSettings] = field(default_factory=dict)

    def error(self, name: str) -> ErrorSettings:
        """The service's answer for an error kind, each unset field falling back to the default."""
        default, custom = DEFAULT_ERRORS[name], self.errors.get(name)
        if custom is None:
            return default
        return ErrorSettings(custom.status or default.status, custom.message or default.message, custom.content_type)


@dataclass(frozen=True)
class GatewaySettings:
    """Headers API Gateway maps from its request context (names are configurable)."""

    stage_header: str | None = "x-apigw-stage"
    request_id_header: str | None = "x-apigw-request-id"
    source_ip_header: str | None = "x-apigw-source-ip"
    api_key_id_header: str | None = "x-apigw-api-key-id"


@dataclass(frozen=True)
class LogSettings:
    """Logging: level and whether to write one JSON line per request."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one proxy process."""

    services: list[ServiceSettings] = field(default_factory=list)
    listen: str = "0.0.0.0:8080"
    metrics_listen: str = "0.0.0.0:9090"
    workers: int | None = None
    """Processes serving the one port (SO_REUSEPORT); default: the CPUs this container may use (1 on memory://)."""
    event_loop: EventLoopChoice = "auto"
    """auto (default): uvloop when it is installed, else asyncio's own loop; see proxy.eventloop."""
    redis_url: str = "memory://"
    redis_max_connections: int = 64
    """Redis connections per process; a burst beyond waits (up to the Redis timeout) for a free one."""
    threescale: ThreescaleSettings = field(default_factory=ThreescaleSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    log: LogSettings = field(default_factory=LogSettings)
    backend_url_explicit: bool = field(default=False, repr=False, compare=False, metadata={"internal": True})
    """threescale.backend_url was given (YAML, PROXY_THREESCALE__BACKEND_URL or BACKEND_ENDPOINT_OVERRIDE): it
    then wins over the backend endpoint 3scale's configuration names for each service, as in APIcast."""
    service_entries: tuple[Any, ...] = field(default=(), repr=False, compare=False, metadata={"internal": True})
    """The YAML's `services:` entries as written (interpolated, overrides applied): merged into every
    configuration that comes from 3scale (see merge_services). Not a key of the YAML."""

    @property
    def from_3scale(self) -> bool:
        """Whether services come from 3scale (the portal or APIcast's file) as well as from the YAML."""
        return bool(self.threescale.portal_endpoint or self.threescale.config_file)


# --------------------------------------------------------------------------------------------- loading


def load_settings(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load, interpolate, override and validate; raises ConfigError naming every bad key and the file.

    `env:NAME` reads the YAML from the environment variable NAME instead of a file (ECS on Fargate has no
    file mounts; the variable can come from SSM or Secrets Manager).
    """
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<environment>"
    raw: Any = {}
    if path is not None:
        text = _read_source(str(path), source, env)
        try:
            raw = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(source, [("", _yaml_problem(exc))]) from None
        if raw is None:
            raw = {}
    return settings_from_dict(raw, source=source, env=env)


def _read_source(path: str, source: str, env: Mapping[str, str]) -> str:
    if path.startswith("env:"):
        name = path[4:]
        if not env.get(name):
            raise ConfigError(source, [("", f"environment variable {name} is not set")])
        return env[name]
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read file: {exc.strerror or exc}")]) from None


def settings_from_dict(raw: Any, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-parsed document (used by tests and the demo as well as by load_settings)."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a mapping of keys")])
    raw = _interpolate(raw, "", env, problems)
    overridden = _apply_env_overrides(raw, env, problems)
    _apply_apicast_variables(raw, env)
    entries = raw.get("services") if isinstance(raw.get("services"), list) else []
    threescale = raw.get("threescale") if isinstance(raw.get("threescale"), dict) else {}
    explicit = threescale.get("backend_url") is not None
    if threescale.get("config_file"):
        source = f"{source} + {threescale['config_file']}"
        raw["services"] = _services_from_file(str(threescale["config_file"]), entries, explicit, problems)
    elif threescale.get("portal_endpoint"):
        raw["services"] = [e for e in entries if _complete(e)]  # the rest wait for the portal's services
    settings = _build(Settings, raw, "", problems)
    if settings is not None:
        settings = dataclasses.replace(settings, service_entries=tuple(entries), backend_url_explicit=explicit)
        _check_semantics(settings, problems)
    if problems or not isinstance(settings, Settings):
        problems = [(key, _set_by(key, message, overridden)) for key, message in problems]
        raise ConfigError(source, problems or [("", "invalid configuration")])
    return settings


_APICAST_VARIABLES = {  # APIcast's environment variables, read as it reads them, unless the YAML sets the key
    "THREESCALE_PORTAL_ENDPOINT": "portal_endpoint",
    "THREESCALE_DEPLOYMENT_ENV": "environment",
    "APICAST_CONFIGURATION_CACHE": "config_refresh",
    "THREESCALE_CONFIG_FILE": "config_file",
    "BACKEND_ENDPOINT_OVERRIDE": "backend_url",
}


def _apply_apicast_variables(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """THREESCALE_PORTAL_ENDPOINT & co. fill their threescale.* key when the YAML leaves it out, so an
    APIcast deployment's environment works as it is."""
    for variable, key in _APICAST_VARIABLES.items():
        if env.get(variable):
            section = raw.setdefault("threescale", {})
            if isinstance(section, dict) and section.get(key) is None:
                section[key] = env[variable]


def _complete(entry: Any) -> bool:
    """A YAML service that stands on its own (an override of a 3scale service may give single fields)."""
    return isinstance(entry, dict) and all(entry.get(k) for k in ("id", "token", "upstream"))


def _services_from_file(path: str, entries: list[Any], explicit: bool, problems: list[tuple[str, str]]) -> list[Any]:
    """APIcast's JSON configuration file, converted and merged with the YAML's entries."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(("threescale.config_file", f"cannot read file: {exc.strerror or exc}"))
        return entries
    except ValueError as exc:
        problems.append(("threescale.config_file", f"is not JSON: {exc}"))
        return entries
    converted, file_problems = entries_from_document(document)
    problems.extend((f"threescale.config_file: {key}", message) for key, message in file_problems)
    return merge_entries(_backends(converted, explicit), entries)


def _backends(entries: list[Any], explicit: bool) -> list[Any]:
    """With threescale.backend_url given, 3scale's per-service backend endpoints give way to it."""
    if not explicit:
        return entries
    return [{k: v for k, v in e.items() if k != "backend_url"} if isinstance(e, dict) else e for e in entries]


def merge_entries(base: list[Any], overrides: list[Any]) -> list[Any]:
    """3scale's service entries with the YAML's applied: an entry with the same id overrides single fields
    (mappings merged key by key, anything else replaced); one only in the YAML is added after them."""
    by_id = {str(e.get("id")): e for e in overrides if isinstance(e, dict) and e.get("id") is not None}
    merged = [_merge(entry, by_id.pop(str(entry.get("id")), {})) for entry in base]
    return merged + [e for e in overrides if not isinstance(e, dict) or str(e.get("id")) in by_id]


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return override


def merge_services(
    settings: Settings, base: list[Any], problems: list[tuple[str, str]]
) -> dict[str, ServiceSettings | None]:
    """The services of a configuration from 3scale (`base`: entries from portal.apicast) with the YAML's
    entries merged in, each validated as the YAML is, on its own: by id, in order, the settings, or None for
    one that does not validate (its problems, named `services[i] (service ID).key`, go to `problems`), so
    one bad service never holds the others back."""
    merged = merge_entries(_backends(base, settings.backend_url_explicit), list(settings.service_entries))
    checked: dict[str, ServiceSettings | None] = {}
    for i, entry in enumerate(merged):
        sid = str(entry.get("id")) if isinstance(entry, dict) else f"#{i}"
        path = f"services[{i}] (service {sid})"
        own: list[tuple[str, str]] = []
        service = _build(ServiceSettings, entry, path, own)
        if service is not None and not own:
            _check_service(service, path, len(merged), own)
        if sid in checked:
            own.append((f"{path}.id", f"duplicate service id {sid!r}"))
        problems.extend(own)
        checked[sid] = None if own or service is None else service
    return checked


# Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_8080_TCP_ADDR`, ... for every Service in the
# namespace (service links); a Service whose name starts with "proxy" must not break PROXY_* overrides.
_SERVICE_LINK = re.compile(
    r"^PROXY(_\w+?)?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$"
)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; a missing variable is a problem of that key."""
    if isinstance(node, dict):
        return {k: _interpolate(v, _join(path, str(k)), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append((path, f"environment variable {name} is not set"))
            return ""

        return _VAR.sub(repl, node)
    return node


def _apply_env_overrides(
    raw: dict[str, Any], env: Mapping[str, str], problems: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """`PROXY_CACHE__TTL=60` sets cache.ttl; `PROXY_SERVICES__0__TOKEN` sets services[0].token.

    Walks the schema beside the document so every bad override is a problem of its variable (never a
    traceback, never its value); returns (config path, variable) of each override applied, so later
    problems of those keys can say which variable set them.
    """
    applied: list[tuple[str, str]] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name == "PROXY_CONFIG":
            continue
        if "__" not in name and _SERVICE_LINK.match(name):
            continue
        words = name[len(ENV_PREFIX) :].split("__")
        if "" in words:
            problems.append((name, "empty part in the name (a `__` too many?)"))
            continue
        path = _override(raw, words, name, env[name], problems)
        if path is not None:
            applied.append((path, name))
    return applied


_INVALID = object()
"""An override value that was already reported as a problem."""


def _override(
    raw: dict[str, Any], words: list[str], name: str, text: str, problems: list[tuple[str, str]]
) -> str | None:
    """Set one override in `raw`; returns its config path, or None after adding the problem."""
    node: Any = raw
    tp: Any = Settings
    path = ""
    for i, word in enumerate(words):
        part = word.lower()
        key: int | str
        if isinstance(node, list):
            if not part.isdigit():
                problems.append((name, f"{path} is a list: {part!r} must be an item number (0 to {len(node) - 1})"))
                return None
            key = int(part)
            if key >= len(node):
                count = f"{len(node)} item{'' if len(node) == 1 else 's'}"
                problems.append((name, f"{path} has {count} in the file, so it has no item {key} to override"))
                return None
            child_path, child_tp = f"{path}[{key}]", (get_args(tp)[0] if tp is not None else None)
            child = node[key]
        else:
            key = part
            child_path, child_tp = _join(path, part), _field_type(tp, part)
            child = node.get(key)
        if i == len(words) - 1:
            value = _override_value(child_tp, text, name, problems)
            if value is _INVALID:
                return None
            node[key] = value
            return child_path
        inner = _unwrap_optional(child_tp)
        if inner is not None and not _is_structure(inner):
            problems.append((name, f"{child_path} is a single value, not a mapping: nothing below it to set"))
            return None
        wants_list = get_origin(inner) is list or (inner is None and isinstance(child, list))
        if wants_list and child is None:
            default = " (its default is used)" if _has_default(tp, part) else ""
            whole = ENV_PREFIX + "__".join(words[: i + 1])
            problems.append(
                (
                    name,
                    f"{child_path} is not in the file{default}, so it has no item {words[i + 1].lower()} to "
                    f"override; write it in the file, or set the whole list with {whole}='[...]'",
                )
            )
            return None
        if wants_list and not isinstance(child, list):
            problems.append((name, f"{child_path} is not a list in the file"))
            return None
        if not wants_list:
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                problems.append((name, f"{child_path} is not a mapping in the file"))
                return None
        node, tp, path = child, inner, child_path
    return None  # not reached: the loop returns at the last word


def _override_value(tp: Any, text: str, name: str, problems: list[tuple[str, str]]) -> Any:
    """The value an override sets: strings and numbers as written (`0123` stays `0123`), booleans and null
    as YAML, a section or list as a YAML document; `_build` then checks it against the schema."""
    if tp is None:
        return _scalar(text)  # not in the schema: _build reports the unknown key
    inner = _unwrap_optional(tp)
    if inner is not tp and _scalar(text) is None:
        return None  # "", "~", "null" unset an optional key
    if _is_structure(inner):
        try:
            return yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            problems.append((name, f"not valid YAML: {_yaml_problem(exc)}"))
            return _INVALID
    if inner is bool:
        return _scalar(text)
    return text


def _field_type(tp: Any, key: str) -> Any:
    """The schema type of `key` below `tp` (a dataclass or a dict type), or None when the schema has no such key."""
    if dataclasses.is_dataclass(tp):
        names = {f.name for f in dataclasses.fields(tp)}
        return typing.get_type_hints(tp)[key] if key in names else None
    if get_origin(tp) is dict:
        return get_args(tp)[1]
    return None


def _has_default(tp: Any, key: str) -> bool:
    """Whether the dataclass `tp` gives `key` a default (so a key missing from the file still has a value)."""
    if not dataclasses.is_dataclass(tp):
        return False
    for f in dataclasses.fields(tp):
        if f.name == key:
            return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    return False


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` → X; anything else as it is."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def _is_structure(tp: Any) -> bool:
    """A section, list or mapping in the schema (as opposed to a single value)."""
    return dataclasses.is_dataclass(tp) or get_origin(tp) in (list, dict)


def _set_by(key: str, message: str, overridden: list[tuple[str, str]]) -> str:
    """Add the variables that set `key` (or a section above it) to a problem's message."""
    names = [name for path, name in overridden if key == path or key.startswith((f"{path}.", f"{path}["))]
    return f"{message} (set by {', '.join(names)})" if names else message


def _yaml_problem(exc: yaml.YAMLError | RecursionError) -> str:
    """Where and what, never the text itself (it may hold a secret)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.position + 1}: {exc.reason}"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}{getattr(exc, 'problem', None) or 'invalid YAML'}"


def _scalar(text: str) -> Any:
    """Read an environment value as a YAML scalar so `60` is a number and `true` a boolean."""
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return text
    return value if isinstance(value, str | int | float | bool) or value is None else text


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Check `value` against the type hint `tp`, recursing into dataclasses, lists and dicts."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, path, problems)
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        problems.append((path, f"must be one of {', '.join(choices)}, got {value!r}"))
        return None
    if origin is list:
        if not isinstance(value, list):
            problems.append((path, "must be a list"))
            return None
        (item_tp,) = get_args(tp)
        return [_build(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append((path, "must be a mapping"))
            return None
        _, val_tp = get_args(tp)
        return {str(k): _build(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, problems)
    return _build_scalar(tp, value, path, problems)


def _build_scalar(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    key = path.rsplit(".", 1)[-1]
    shown = "" if key in SECRET_KEYS else f", got {value!r}"
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append((path, f"must be true or false{shown}"))
        return None
    if tp in (int, float):
        if isinstance(value, bool):
            problems.append((path, f"must be a number{shown}"))
            return None
        if isinstance(value, int | float):
            if tp is int and isinstance(value, float) and not value.is_integer():
                problems.append((path, f"must be a whole number{shown}"))
                return None
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        problems.append((path, f"must be a {'whole ' if tp is int else ''}number{shown}"))
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # ids like 2555417777820 written without quotes
        problems.append((path, "must be a string"))
        return None
    raise TypeError(f"unsupported config type {tp!r}")  # a schema bug, not a user error


def _build_dataclass(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if not isinstance(value, dict):
        problems.append((path or "<top>", "must be a mapping"))
        return None
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if not f.metadata.get("internal")}
    for key in value:
        if key not in fields:
            near = [n for n in fields if n.startswith(str(key)[:3])]
            hint = f" (did you mean {near[0]}?)" if near else ""
            problems.append((_join(path, str(key)), f"unknown key{hint}"))
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _build(hints[name], value[name], _join(path, name), problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append((_join(path, name), "is required"))
    if len(problems) > before:
        return None
    return tp(**kwargs)


# --------------------------------------------------------------------------------------------- semantics


def _check_semantics(s: Settings, problems: list[tuple[str, str]]) -> None:
    """Checks that span keys or need parsing: addresses, URLs, TTLs, services and their rules."""
    for key in ("listen", "metrics_listen"):
        try:
            parse_listen(getattr(s, key))
        except ValueError as exc:
            problems.append((key, str(exc)))
    scheme = urlsplit(s.redis_url).scheme
    if scheme not in ("redis", "rediss", "unix", "memory"):
        problems.append(("redis_url", "scheme must be redis://, rediss://, unix:// or memory://"))
    if not _is_http_url(s.threescale.backend_url):
        problems.append(("threescale.backend_url", "must be an http:// or https:// URL"))
    for key in ("timeout",):
        if getattr(s.threescale, key) <= 0:
            problems.append((f"threescale.{key}", "must be greater than 0"))
    for key in ("ttl", "negative_ttl", "local_ttl", "stale_ttl"):
        if getattr(s.cache, key) < 0:
            problems.append((f"cache.{key}", "must not be negative"))
    if s.cache.local_ttl > s.cache.ttl:
        problems.append(("cache.local_ttl", "must not be greater than cache.ttl"))
    if s.cache.local_max_entries < 2:
        problems.append(("cache.local_max_entries", "must be at least 2 (allowed and denied keys are kept apart)"))
    elif s.cache.local_max_negative is not None and not 0 < s.cache.local_max_negative < s.cache.local_max_entries:
        problems.append(("cache.local_max_negative", "must be greater than 0 and less than cache.local_max_entries"))
    for key in ("interval", "flush_to_redis_ms", "max_batch", "lease", "max_pending_memory", "backoff_max"):
        if getattr(s.report, key) <= 0:
            problems.append((f"report.{key}", "must be greater than 0"))
    if s.report.max_batch > 1000:
        problems.append(("report.max_batch", "must be at most 1000 (3scale caps a POST at 4096 parameters)"))
    if s.report.lease <= s.threescale.timeout + LEASE_MARGIN:
        # Each POST starts right after a renewal, so it and its ack must end within one lease; this bound is
        # what makes "no batch is reported twice" true (a heartbeat holds the lease through verification).
        problems.append(
            (
                "report.lease",
                f"must be more than threescale.timeout + {LEASE_MARGIN:g} s (one POST and two Redis calls), "
                "or another replica may take over a batch whose POST is still in flight",
            )
        )
    for key in ("batch_fields", "verify_concurrency"):
        if getattr(s.report, key) < 1:
            problems.append((f"report.{key}", "must be at least 1"))
    if s.report.verify_concurrency > s.threescale.pool_size:
        problems.append(("report.verify_concurrency", "must not exceed threescale.pool_size"))
    if s.redis_max_connections < 1:
        problems.append(("redis_max_connections", "must be at least 1"))
    if s.upstream.pool_size < 1:
        problems.append(("upstream.pool_size", "must be at least 1"))
    if s.upstream.keepalive_timeout <= 0:
        problems.append(("upstream.keepalive_timeout", "must be greater than 0"))
    if s.event_loop == "uvloop" and not uvloop_available():
        problems.append(("event_loop", "uvloop is not installed (pip install uvloop, or use auto or asyncio)"))
    if s.workers is not None:
        if s.workers < 1:
            problems.append(("workers", "must be at least 1"))
        elif s.workers > 1 and urlsplit(s.redis_url).scheme == "memory":
            problems.append(
                ("workers", "must be 1 with redis_url memory:// (each process would keep its own limits and cache)")
            )
    if s.shutdown.drain_delay < 0:
        problems.append(("shutdown.drain_delay", "must not be negative"))
    if s.shutdown.timeout <= s.shutdown.drain_delay:
        problems.append(("shutdown.timeout", "must be greater than shutdown.drain_delay"))
    if s.threescale.portal_endpoint is not None:
        if not _is_http_url(s.threescale.portal_endpoint):
            problems.append(
                ("threescale.portal_endpoint", "must be an http:// or https:// URL (with the access token)")
            )
        elif urlsplit(s.threescale.portal_endpoint).path not in ("", "/"):
            problems.append(
                ("threescale.portal_endpoint", "must have no path (APIcast's custom config path is not supported)")
            )
    if s.threescale.config_refresh <= 0:
        problems.append(("threescale.config_refresh", "must be greater than 0"))
    if not s.services and not s.threescale.portal_endpoint:
        problems.append(("services", "at least one service is required (or threescale.portal_endpoint)"))
    _check_services(s.services, problems)


def _check_services(services: list[ServiceSettings], problems: list[tuple[str, str]]) -> None:
    seen: set[str] = set()
    for i, svc in enumerate(services):
        _check_service(svc, f"services[{i}]", len(services), problems)
        if svc.id in seen:
            problems.append((f"services[{i}].id", f"duplicate service id {svc.id!r}"))
        seen.add(svc.id)


def _check_service(svc: ServiceSettings, path: str, count: int, problems: list[tuple[str, str]]) -> None:
    if not svc.id.strip():
        problems.append((f"{path}.id", "must not be empty"))
    if not svc.token:
        problems.append((f"{path}.token", "must not be empty"))
    if not _is_http_url(svc.upstream):
        problems.append((f"{path}.upstream", "must be an http:// or https:// URL"))
    if svc.backend_url is not None and not _is_http_url(svc.backend_url):
        problems.append((f"{path}.backend_url", "must be an http:// or https:// URL"))
    if svc.upstream_timeout <= 0:
        problems.append((f"{path}.upstream_timeout", "must be greater than 0"))
    if count > 1 and svc.match is None:
        problems.append((f"{path}.match", "is required when more than one service is configured"))
    if svc.match is not None and not svc.match.path_prefix.startswith("/"):
        problems.append((f"{path}.match.path_prefix", "must start with /"))
    creds = svc.credentials
    if creds.user_key and creds.app_id:
        problems.append((f"{path}.credentials", "give either user_key or app_id (with app_key), not both"))
    elif not creds.user_key and not creds.app_id:
        if creds.location == "authorization":
            pass  # Basic auth: the user name is the user_key
        else:
            problems.append((f"{path}.credentials", "needs user_key or app_id: the header or parameter name"))
    if creds.app_key and not creds.app_id:
        problems.append((f"{path}.credentials.app_key", "needs app_id"))
    if not svc.mapping_rules:
        problems.append((f"{path}.mapping_rules", "at least one mapping rule is required"))
    for j, rule in enumerate(svc.mapping_rules):
        rpath = f"{path}.mapping_rules[{j}]"
        if rule.method.upper() not in HTTP_METHODS:
            problems.append((f"{rpath}.method", f"must be an HTTP method or ANY, got {rule.method!r}"))
        if not rule.pattern.startswith("/"):
            problems.append((f"{rpath}.pattern", "must start with /"))
        else:
            try:
                re.compile(pattern_regex(rule.pattern), re.ASCII)
            except re.error as exc:
                problems.append((f"{rpath}.pattern", f"is not a valid pattern (APIcast's regex): {exc}"))
        if not rule.metric:
            problems.append((f"{rpath}.metric", "must not be empty"))
        if rule.delta < 0:
            problems.append((f"{rpath}.delta", "must not be negative"))
    for name, err in svc.errors.items():
        if name not in DEFAULT_ERRORS:
            problems.append((f"{path}.errors.{name}", f"unknown error kind; known: {', '.join(DEFAULT_ERRORS)}"))
        elif err is not None and err.status is not None and not 100 <= err.status <= 599:
            problems.append((f"{path}.errors.{name}.status", "must be an HTTP status code (100-599)"))


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`, or `:port`) into a bindable pair."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
