"""ThreescaleClient against a real aiohttp server on a socket that records what it receives."""

from __future__ import annotations

import asyncio
import socket
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.threescale import (
    AppCredentials,
    BackendConnectionError,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    LimitHeaders,
    RequestRejected,
    ThreescaleClient,
    Transaction,
    UnparseableResponse,
)

TOKEN = "svc-token-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"
DEFAULT_OPTIONS_HEADER = "hierarchy=1&limit_headers=1&rejection_reason_header=1"

AUTHORIZED = (
    '<?xml version="1.0" encoding="UTF-8"?><status><authorized>true</authorized><plan>Default</plan>'
    '<usage_reports><usage_report metric="hits" period="minute"><period_start>2014-08-22 09:06:00 +0000'
    "</period_start><period_end>2014-08-22 09:07:00 +0000</period_end><max_value>5</max_value>"
    '<current_value>1</current_value></usage_report></usage_reports><hierarchy><metric name="hits" children=""/>'
    "</hierarchy></status>"
)
DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?><status><authorized>false</authorized>'
    "<reason>usage limits are exceeded</reason><plan>Default</plan></status>"
)
XML_TYPE = "application/vnd.3scale-v2.0+xml"


def error_doc(code: str, message: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><error code="{code}">{message}</error>'


@dataclass
class Received:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    headers: dict[str, str]
    peer_port: int


@dataclass
class Reply:
    status: int = 200
    body: str = AUTHORIZED
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang_up: bool = False


class FakeBackend:
    """Answers every request with `reply` and keeps what it received."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode()
        self.received.append(
            Received(
                method=request.method,
                path=request.path,
                query=parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True),
                form=parse_qsl(body, keep_blank_values=True),
                headers=dict(request.headers),
                peer_port=request.transport.get_extra_info("peername")[1],
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.reply.delay)
        finally:
            self.in_flight -= 1
        if self.reply.hang_up:
            request.transport.close()
        return web.Response(
            status=self.reply.status, text=self.reply.body, headers={"Content-Type": XML_TYPE, **self.reply.headers}
        )

    @property
    def last(self) -> Received:
        return self.received[-1]


@pytest.fixture
async def backend() -> AsyncIterator[tuple[FakeBackend, TestServer]]:
    fake = FakeBackend()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield fake, server
    await server.close()


@pytest.fixture
async def fake(backend: tuple[FakeBackend, TestServer]) -> FakeBackend:
    return backend[0]


@pytest.fixture
async def client(backend: tuple[FakeBackend, TestServer]) -> AsyncIterator[ThreescaleClient]:
    async with ThreescaleClient(str(backend[1].make_url("/")), timeout=2.0) as c:
        yield c


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def full_text(exc: BaseException) -> str:
    return str(exc) + "".join(traceback.format_exception(exc))


# --- authorize / authrep: what goes on the wire -----------------------------------------------------------------


async def test_authorize_request_on_the_wire_and_parsed_answer(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(
        headers={"3scale-limit-remaining": "4", "3scale-limit-reset": "42", "3scale-limit-max-value": "5"}
    )

    status = await client.authorize("svc1", TOKEN, AppCredentials(user_key=USER_KEY), {"hits": 1})

    assert (fake.last.method, fake.last.path) == ("GET", "/transactions/authorize.xml")
    assert fake.last.query == [
        ("service_token", TOKEN),
        ("service_id", "svc1"),
        ("user_key", USER_KEY),
        ("usage[hits]", "1"),
    ]
    assert fake.last.headers["3scale-options"] == DEFAULT_OPTIONS_HEADER
    assert status.authorized is True
    assert status.http_status == 200
    assert status.plan == "Default"
    assert status.usage_reports[0].period_start == datetime(2014, 8, 22, 9, 6, tzinfo=UTC)
    assert status.usage_reports[0].current_value == 1
    assert status.hierarchy == {"hits": ()}
    assert status.limit_headers == LimitHeaders(remaining=4, reset=42, max_value=5)


async def test_authrep_with_app_id_key_log_code_and_replaced_options(
    client: ThreescaleClient, fake: FakeBackend
) -> None:
    creds = AppCredentials(app_id="app1", app_key="")

    await client.authrep("svc2", TOKEN, creds, {"hits": 2, "search": 1}, options={"flat_usage": "1"}, log_code=200)

    assert (fake.last.method, fake.last.path) == ("GET", "/transactions/authrep.xml")
    assert fake.last.query == [
        ("service_token", TOKEN),
        ("service_id", "svc2"),
        ("app_id", "app1"),
        ("app_key", ""),
        ("usage[hits]", "2"),
        ("usage[search]", "1"),
        ("log[code]", "200"),
    ]
    assert fake.last.headers["3scale-options"] == "flat_usage=1"


async def test_empty_options_send_no_options_header(client: ThreescaleClient, fake: FakeBackend) -> None:
    await client.authorize("s", TOKEN, AppCredentials(user_key="u"), options={})

    assert "3scale-options" not in {key.lower() for key in fake.last.headers}
    assert fake.last.query == [("service_token", TOKEN), ("service_id", "s"), ("user_key", "u")]


async def test_path_prefix_and_trailing_slash(backend: tuple[FakeBackend, TestServer]) -> None:
    fake, server = backend
    async with ThreescaleClient(str(server.make_url("/3scale/backend/"))) as client:
        await client.authorize("s", TOKEN, AppCredentials(user_key="u"))
        assert fake.last.path == "/3scale/backend/transactions/authorize.xml"
        await client.report("s", TOKEN, [Transaction(AppCredentials(user_key="u"), {"hits": 1})])
        assert fake.last.path == "/3scale/backend/transactions.xml"


async def test_user_info_of_the_backend_url_is_never_shown() -> None:
    async with ThreescaleClient(f"http://admin:hunter2@127.0.0.1:{closed_port()}/prefix/") as client:
        assert client.backend_url.endswith("/prefix")
        assert "hunter2" not in client.backend_url and "admin" not in client.backend_url
        with pytest.raises(BackendConnectionError) as caught:
            await client.authorize("s", TOKEN, AppCredentials(user_key="u"))

    assert "hunter2" not in full_text(caught.value)


@pytest.mark.parametrize("url", ["ftp://host", "localhost:3000", "http://", "/transactions"])
def test_invalid_backend_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="backend URL"):
        ThreescaleClient(url)


# --- authorize / authrep: answers -------------------------------------------------------------------------------


async def test_409_denial_with_rejection_reason_header(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(status=409, body=DENIED, headers={"3scale-rejection-reason": "limits_exceeded"})

    status = await client.authrep("s", TOKEN, AppCredentials(user_key="u"), {"hits": 1})

    assert (status.authorized, status.http_status) == (False, 409)
    assert (status.code, status.reason) == ("limits_exceeded", "usage limits are exceeded")


@pytest.mark.parametrize(
    ("http_status", "code", "message"),
    [
        (403, "user_key_invalid", f'user key "{USER_KEY}" is invalid'),
        (404, "application_not_found", 'application with id="app9" was not found'),
        (404, "metric_invalid", 'metric "nope" is invalid'),
        (422, "service_id_missing", "Service ID is missing"),
        (
            400,
            "end_users_no_longer_supported",
            "End-users are no longer supported, do not specify the user_id parameter",
        ),
    ],
)
async def test_4xx_error_documents_are_denials_with_a_code(
    client: ThreescaleClient, fake: FakeBackend, http_status: int, code: str, message: str
) -> None:
    fake.reply = Reply(status=http_status, body=error_doc(code, message))

    status = await client.authorize("s", TOKEN, AppCredentials(user_key=USER_KEY))

    assert (status.authorized, status.http_status, status.code) == (False, http_status, code)
    assert status.reason == message.replace(USER_KEY, "user…cdef")


async def test_echoed_service_token_is_masked_in_the_reason(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(
        status=403, body=error_doc("service_token_invalid", f'service token "{TOKEN}" or service id "s" is invalid')
    )

    status = await client.authorize("s", TOKEN, AppCredentials(user_key="u"))

    assert status.code == "service_token_invalid"
    assert TOKEN not in (status.reason or "")
    assert status.reason == 'service token "svc-…cdef" or service id "s" is invalid'


async def test_bare_empty_403_is_reported_as_bad_request(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(status=403, body="")

    status = await client.authorize("s", TOKEN, AppCredentials(user_key="u"), {"hits": 1})

    assert (status.authorized, status.http_status, status.code) == (False, 403, "bad_request")


@pytest.mark.parametrize("http_status", [500, 502, 503, 429])
async def test_server_errors_raise_backend_server_error(
    client: ThreescaleClient, fake: FakeBackend, http_status: int
) -> None:
    fake.reply = Reply(status=http_status, body="oops")

    with pytest.raises(BackendServerError) as caught:
        await client.authorize("s", TOKEN, AppCredentials(user_key=USER_KEY))

    assert isinstance(caught.value, BackendUnavailable)
    assert not isinstance(caught.value, UnparseableResponse)
    assert (caught.value.status, caught.value.endpoint) == (http_status, "authorize")
    assert caught.value.maybe_delivered is False
    assert str(http_status) in str(caught.value)
    assert TOKEN not in full_text(caught.value)
    assert USER_KEY not in full_text(caught.value)


async def test_gateway_timeout_may_have_been_delivered(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(status=504, body="")

    with pytest.raises(BackendServerError) as caught:
        await client.authrep("s", TOKEN, AppCredentials(user_key="u"), {"hits": 1})

    assert (caught.value.status, caught.value.maybe_delivered) == (504, True)


@pytest.mark.parametrize(("http_status", "body"), [(200, "<html>hello</html"), (409, "{}"), (404, "")])
async def test_unparseable_bodies_raise_unparseable_response(
    client: ThreescaleClient, fake: FakeBackend, http_status: int, body: str
) -> None:
    fake.reply = Reply(status=http_status, body=body)

    with pytest.raises(UnparseableResponse) as caught:
        await client.authorize("s", TOKEN, AppCredentials(user_key="u"))

    assert (caught.value.status, caught.value.endpoint) == (http_status, "authorize")
    assert "authorize" in str(caught.value)


async def test_timeout_raises_backend_timeout_without_secrets(backend: tuple[FakeBackend, TestServer]) -> None:
    fake, server = backend
    fake.reply = Reply(delay=1.0)
    async with ThreescaleClient(str(server.make_url("/")), timeout=0.1) as client:
        started = time.monotonic()
        with pytest.raises(BackendTimeout) as caught:
            await client.authorize("s", TOKEN, AppCredentials(user_key=USER_KEY))

    assert time.monotonic() - started < 0.8
    assert isinstance(caught.value, BackendUnavailable)
    assert (caught.value.endpoint, caught.value.maybe_delivered) == ("authorize", True)
    assert TOKEN not in full_text(caught.value)
    assert USER_KEY not in full_text(caught.value)


async def test_connection_refused_raises_backend_connection_error_without_secrets() -> None:
    async with ThreescaleClient(f"http://127.0.0.1:{closed_port()}", timeout=2.0) as client:
        with pytest.raises(BackendConnectionError) as caught:
            await client.authorize("s", TOKEN, AppCredentials(user_key=USER_KEY))

    assert (caught.value.endpoint, caught.value.maybe_delivered) == ("authorize", False)
    assert "ClientConnectorError" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert TOKEN not in full_text(caught.value)
    assert USER_KEY not in full_text(caught.value)


async def test_hang_up_after_the_request_may_have_been_delivered(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(hang_up=True)

    with pytest.raises(BackendConnectionError) as caught:
        await client.authrep("s", TOKEN, AppCredentials(user_key="u"), {"hits": 1})

    assert caught.value.maybe_delivered is True


# --- report -----------------------------------------------------------------------------------------------------


async def test_report_posts_an_indexed_form(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(status=202, body="")
    transactions = [
        Transaction(AppCredentials(user_key="u1"), {"hits": 3}, timestamp=datetime(2024, 3, 4, 10, 1, tzinfo=UTC)),
        Transaction(AppCredentials(app_id="a2", app_key="k2"), {"hits": 1, "search": 1}, log_code=200),
    ]

    result = await client.report("svc1", TOKEN, transactions)

    assert result is None
    assert (fake.last.method, fake.last.path, fake.last.query) == ("POST", "/transactions.xml", [])
    assert fake.last.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "3scale-options" not in {key.lower() for key in fake.last.headers}
    assert fake.last.form == [
        ("service_token", TOKEN),
        ("service_id", "svc1"),
        ("transactions[0][user_key]", "u1"),
        ("transactions[0][usage][hits]", "3"),
        ("transactions[0][timestamp]", "2024-03-04 10:01:00 +0000"),
        ("transactions[1][app_id]", "a2"),
        ("transactions[1][usage][hits]", "1"),
        ("transactions[1][usage][search]", "1"),
        ("transactions[1][log][code]", "200"),
    ]


@pytest.mark.parametrize("http_status", [200, 201, 202, 204])
async def test_report_accepts_any_2xx(client: ThreescaleClient, fake: FakeBackend, http_status: int) -> None:
    fake.reply = Reply(status=http_status, body="")

    assert await client.report("s", TOKEN, [Transaction(AppCredentials(user_key="u"), {"hits": 1})]) is None
    assert len(fake.received) == 1


async def test_empty_report_sends_nothing(client: ThreescaleClient, fake: FakeBackend) -> None:
    await client.report("s", TOKEN, [])

    assert fake.received == []


@pytest.mark.parametrize(
    ("http_status", "code", "message"),
    [
        (400, "transactions_format_invalid", "transactions format is invalid"),
        (403, "service_token_invalid", f'service token "{TOKEN}" or service id "s" is invalid'),
        (422, "not_valid_data", "all data must be valid UTF8"),
    ],
)
async def test_report_error_documents_raise_request_rejected(
    client: ThreescaleClient, fake: FakeBackend, http_status: int, code: str, message: str
) -> None:
    fake.reply = Reply(status=http_status, body=error_doc(code, message))

    with pytest.raises(RequestRejected) as caught:
        await client.report("s", TOKEN, [Transaction(AppCredentials(user_key="u"), {"hits": 1})])

    assert (caught.value.status, caught.value.code, caught.value.endpoint) == (http_status, code, "report")
    assert caught.value.message == message.replace(TOKEN, "svc-…cdef")
    assert not isinstance(caught.value, BackendUnavailable)
    assert TOKEN not in full_text(caught.value)


@pytest.mark.parametrize(
    ("http_status", "body", "error"),
    [
        (500, "", BackendServerError),
        (503, "busy", BackendServerError),
        (408, "", BackendServerError),
        (429, error_doc("rate_limited", "slow down"), BackendServerError),
        (413, "<html>too large</html>", UnparseableResponse),
        (404, "", UnparseableResponse),
    ],
)
async def test_report_failures_that_are_not_rejections(
    client: ThreescaleClient, fake: FakeBackend, http_status: int, body: str, error: type[Exception]
) -> None:
    fake.reply = Reply(status=http_status, body=body)

    with pytest.raises(error) as caught:
        await client.report("s", TOKEN, [Transaction(AppCredentials(user_key=USER_KEY), {"hits": 1})])

    assert type(caught.value) is error
    assert (caught.value.status, caught.value.endpoint, caught.value.maybe_delivered) == (http_status, "report", False)
    assert TOKEN not in full_text(caught.value)


async def test_report_to_a_closed_port_was_surely_not_delivered() -> None:
    transactions = [Transaction(AppCredentials(user_key="u"), {"hits": 1})]
    async with ThreescaleClient(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(BackendConnectionError) as caught:
            await client.report("s", TOKEN, transactions)
    assert (caught.value.endpoint, caught.value.maybe_delivered) == ("report", False)


async def test_report_timeout_may_have_been_delivered(backend: tuple[FakeBackend, TestServer]) -> None:
    fake, server = backend
    fake.reply = Reply(status=202, body="", delay=1.0)
    async with ThreescaleClient(str(server.make_url("/")), timeout=0.1) as client:
        with pytest.raises(BackendTimeout) as caught:
            await client.report("s", TOKEN, [Transaction(AppCredentials(user_key="u"), {"hits": 1})])

    assert (caught.value.endpoint, caught.value.maybe_delivered) == ("report", True)
    assert len(fake.received) == 1


# --- health, pooling and session ownership ----------------------------------------------------------------------


async def test_status_probe(client: ThreescaleClient, fake: FakeBackend) -> None:
    fake.reply = Reply(status=200, body='{"status":"ok"}')
    assert await client.status() is True
    assert (fake.last.method, fake.last.path) == ("GET", "/status")

    fake.reply = Reply(status=503, body="")
    assert await client.status() is False


async def test_status_probe_never_raises() -> None:
    async with ThreescaleClient(f"http://127.0.0.1:{closed_port()}") as client:
        assert await client.status() is False
    assert await client.status() is False


async def test_requests_reuse_one_keep_alive_connection(client: ThreescaleClient, fake: FakeBackend) -> None:
    for _ in range(3):
        await client.authorize("s", TOKEN, AppCredentials(user_key="u"))

    assert len({r.peer_port for r in fake.received}) == 1


async def test_pool_size_bounds_concurrent_requests(backend: tuple[FakeBackend, TestServer]) -> None:
    fake, server = backend
    fake.reply = Reply(delay=0.1)
    creds = AppCredentials(user_key="u")

    async def burst(client: ThreescaleClient) -> None:
        await asyncio.gather(*(client.authorize("s", TOKEN, creds) for _ in range(4)))

    async with ThreescaleClient(str(server.make_url("/")), pool_size=1) as narrow:
        await burst(narrow)
    assert fake.max_in_flight == 1

    fake.max_in_flight = 0
    async with ThreescaleClient(str(server.make_url("/")), pool_size=4) as wide:
        await burst(wide)
    assert fake.max_in_flight > 1


async def test_own_session_is_closed_and_the_client_refuses_further_calls(client: ThreescaleClient) -> None:
    await client.authorize("s", TOKEN, AppCredentials(user_key="u"))
    session = client._session
    assert session is not None

    await client.close()

    assert session.closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.authorize("s", TOKEN, AppCredentials(user_key="u"))


async def test_a_session_passed_in_is_used_and_left_open(backend: tuple[FakeBackend, TestServer]) -> None:
    fake, server = backend
    async with aiohttp.ClientSession(headers={"X-Probe": "outer"}) as session:
        async with ThreescaleClient(str(server.make_url("/")), session=session) as client:
            await client.authorize("s", TOKEN, AppCredentials(user_key="u"))
        assert fake.last.headers["X-Probe"] == "outer"
        assert not session.closed


async def test_session_is_created_lazily_inside_the_loop(backend: tuple[FakeBackend, TestServer]) -> None:
    client = ThreescaleClient(str(backend[1].make_url("/")))
    assert client._session is None
    assert await client.status() is True
    assert client._session is not None
    await client.close()


async def test_waiting_for_a_pooled_connection_counts_against_the_timeout(
    backend: tuple[FakeBackend, TestServer],
) -> None:
    fake, server = backend
    fake.reply = Reply(delay=1.0)
    async with ThreescaleClient(str(server.make_url("/")), timeout=0.2, pool_size=1) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.authorize("s", TOKEN, AppCredentials(user_key=USER_KEY)) for _ in range(2)),
            return_exceptions=True,
        )

    assert time.monotonic() - started < 0.8
    assert all(isinstance(r, BackendTimeout) for r in results)
    assert len(fake.received) == 1
    for error in results:
        assert TOKEN not in full_text(error)
        assert USER_KEY not in full_text(error)
