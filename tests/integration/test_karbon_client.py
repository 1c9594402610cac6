"""KarbonClient over stubbed HTTP (`responses`): auth headers, gzip and timeouts, OData paging by
`@odata.nextLink`, retries honouring `Retry-After`, Karbon's error shapes mapped to our errors,
and the client-side request budget. Sleeps and clocks are injected, so nothing really waits."""

from __future__ import annotations

import gzip
import json
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from adapters.http import RequestBudget, parse_retry_after
from adapters.karbon.client import KarbonClient
from connector.domain.errors import ConfigError, RejectedError, TransientError

BASE = "https://api.karbonhq.com"
TOKEN = "0f8fad5b-d9cb-469f-a165-70867728950e"
ACCESS_KEY = "eyJhbGciOiJIUzI1NiJ9.firm-smith-cpa"
HINT = "check the Karbon API token and the firm's AccessKey"
SETTINGS_URL = f"{BASE}/v3/TenantSettings"
WORK_ITEM_URL = f"{BASE}/v3/WorkItems/2LPSrkzbYrn4"
SETTINGS = {"TenantKey": "3Kf9pLq2ZxVb"}
RATE_LIMITED = {"statusCode": "429", "message": "Rate limit is exceeded. Try again in 7 seconds."}


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it.

    Each thread sleeps from the instant it last read, like a real sleeper would, so threads
    sleeping side by side do not add their waits up."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._last_read = threading.local()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            self._last_read.value = self._now
            return self._now

    def last_read(self) -> float:
        value: float = self._last_read.value
        return value

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        with self._lock:
            self._now = max(self._now, self._last_read.value + seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    """What the retry policy slept, in order."""
    return []


@pytest.fixture
def budget_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    sleeps: list[float], budget_clock: FakeClock
) -> Iterator[Callable[..., KarbonClient]]:
    made: list[KarbonClient] = []

    def make(**options: Any) -> KarbonClient:
        options.setdefault(
            "budget",
            RequestBudget(120, monotonic=budget_clock.monotonic, sleep=budget_clock.sleep),
        )
        client = KarbonClient(
            bearer_token=TOKEN, access_key=ACCESS_KEY, sleep=sleeps.append, **options
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., KarbonClient]) -> KarbonClient:
    return make_client()


def karbon_error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def summaries(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"@odata.type": "#KarbonService.WorkItemSummaryDTO", "WorkItemKey": f"WI{n:010d}"}
        for n in range(start, start + count)
    ]


# ---------------------------------------------------------------------- headers, gzip, timeout


def test_every_request_carries_both_auth_headers_gzip_and_the_timeout(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    client = make_client(timeout=(1.5, 9.0))
    next_link = f"{BASE}/v3/WorkItems?$top=100&$skip=100"
    http.get(
        f"{BASE}/v3/WorkItems",
        match=[matchers.query_param_matcher({"$top": "100"})],
        json={"value": summaries(0, 1), "@odata.nextLink": next_link},
    )
    http.get(next_link, status=429, headers={"Retry-After": "1"}, json=RATE_LIMITED)
    http.get(next_link, json={"value": summaries(1, 1)})
    http.post(f"{BASE}/v3/WebhookSubscriptions", status=201, json={})

    assert len(list(client.work_items())) == 2
    client.subscribe("Work", "https://sync.example.com/hooks/karbon", "signing-key-0123456789")

    # first page, the 429, its retry, and the POST: every one of them is fully dressed
    assert len(http.calls) == 4
    for call in http.calls:
        headers = call.request.headers
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["AccessKey"] == ACCESS_KEY
        assert "gzip" in headers["Accept-Encoding"]
        assert call.request.req_kwargs["timeout"] == (1.5, 9.0)
    assert sleeps == [1.0]


def test_a_gzipped_body_is_decoded(http: responses.RequestsMock, client: KarbonClient) -> None:
    http.get(
        SETTINGS_URL,
        body=gzip.compress(json.dumps(SETTINGS).encode()),
        headers={"Content-Encoding": "gzip"},
        content_type="application/json",
    )

    assert client.tenant_settings() == SETTINGS


def test_the_default_timeout_is_finite(http: responses.RequestsMock, client: KarbonClient) -> None:
    http.get(SETTINGS_URL, json=SETTINGS)

    client.tenant_settings()

    connect, read = http.calls[0].request.req_kwargs["timeout"]
    assert 0 < connect <= 10
    assert 0 < read <= 120


# ---------------------------------------------------------------------- paging


def test_paging_follows_next_link_verbatim_and_stops_when_it_is_absent(
    http: responses.RequestsMock, client: KarbonClient
) -> None:
    completed = "PrimaryStatus eq 'Completed'"
    # Karbon's nextLinks carry query options the client never sent ($skiptoken); a client that
    # rebuilt the URL from $skip would miss them and hit no registered response.
    page_2 = (
        f"{BASE}/v3/WorkItems?$filter=PrimaryStatus%20eq%20%27Completed%27"
        "&$top=100&$skip=100&$skiptoken=WI0000000099"
    )
    page_3 = (
        f"{BASE}/v3/WorkItems?$filter=PrimaryStatus%20eq%20%27Completed%27"
        "&$top=100&$skip=200&$skiptoken=WI0000000199"
    )
    http.get(
        f"{BASE}/v3/WorkItems",
        match=[matchers.query_param_matcher({"$top": "100", "$filter": completed})],
        json={"@odata.count": 250, "value": summaries(0, 100), "@odata.nextLink": page_2},
    )
    http.get(page_2, json={"value": summaries(100, 100), "@odata.nextLink": page_3})
    http.get(page_3, json={"value": summaries(200, 50)})

    keys = [row["WorkItemKey"] for row in client.work_items(completed)]

    assert keys == [f"WI{n:010d}" for n in range(250)]
    assert len(set(keys)) == 250
    assert [call.request.url for call in http.calls[1:]] == [page_2, page_3]
    assert len(http.calls) == 3


def test_a_single_page_without_next_link_is_one_request(
    http: responses.RequestsMock, client: KarbonClient
) -> None:
    http.get(f"{BASE}/v3/WorkItems", json={"value": summaries(0, 3), "@odata.nextLink": None})

    assert len(list(client.work_items())) == 3
    assert len(http.calls) == 1


def test_a_failed_page_is_retried_without_repeating_rows(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    page_2 = f"{BASE}/v3/WorkItems?$top=100&$skip=100"
    http.get(f"{BASE}/v3/WorkItems", json={"value": summaries(0, 100), "@odata.nextLink": page_2})
    http.get(page_2, status=503, json={"statusCode": "503", "message": "Service Unavailable"})
    http.get(page_2, json={"value": summaries(100, 20)})

    keys = [row["WorkItemKey"] for row in client.work_items()]

    assert keys == [f"WI{n:010d}" for n in range(120)]
    assert len(sleeps) == 1


# ---------------------------------------------------------------------- 429 and Retry-After


def test_429_waits_retry_after_seconds_then_succeeds(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "7"}, json=RATE_LIMITED)
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert sleeps == [7.0]
    assert len(http.calls) == 2


def test_429_with_an_http_date_waits_until_that_date(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=31)
    http.get(
        SETTINGS_URL,
        status=429,
        headers={"Retry-After": format_datetime(when, usegmt=True)},
        json=RATE_LIMITED,
    )
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert len(sleeps) == 1
    # the date has whole seconds and a little time passes before it is read
    assert 29.0 < sleeps[0] <= 31.0


def test_a_retry_after_beyond_max_wait_is_capped(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    client = make_client(max_wait=20.0)
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "3600"}, json=RATE_LIMITED)
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert sleeps == [20.0]


def test_429_forever_gives_up_after_max_attempts(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    client = make_client(max_attempts=4)
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "7"}, json=RATE_LIMITED)

    with pytest.raises(TransientError) as caught:
        client.tenant_settings()

    assert len(http.calls) == 4
    assert client.requests_sent == 4
    assert sleeps == [7.0, 7.0, 7.0]
    assert caught.value.retry_after == 7.0
    assert "Rate limit is exceeded" in str(caught.value)


# ---------------------------------------------------------------------- 5xx, network


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(
            500,
            karbon_error("5001", "An error has occurred. API Request Id: 7d1c0b7e"),
            id="500-error-envelope",
        ),
        pytest.param(503, {"statusCode": "503", "message": "Service Unavailable"}, id="503-flat"),
        pytest.param(500, {"statusCode": "500", "message": "Internal error"}, id="500-flat"),
        pytest.param(503, karbon_error("5001", "Temporarily unavailable"), id="503-error-envelope"),
    ],
)
def test_server_errors_are_retried_with_exponential_backoff_then_succeed(
    http: responses.RequestsMock,
    make_client: Callable[..., KarbonClient],
    sleeps: list[float],
    status: int,
    body: dict[str, Any],
) -> None:
    client = make_client(max_attempts=5, max_wait=60.0)
    for _ in range(4):
        http.get(SETTINGS_URL, status=status, json=body)
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert len(http.calls) == 5
    assert len(sleeps) == 4
    assert all(0 < wait <= 60.0 for wait in sleeps)
    # backoff grows: the fourth wait is well beyond the first, whatever the jitter
    assert sleeps[3] > 2 * sleeps[0]


def test_a_server_error_that_persists_carries_karbons_message(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    client = make_client(max_attempts=3)
    http.get(SETTINGS_URL, status=500, json=karbon_error("5001", "API Request Id: 7d1c0b7e"))

    with pytest.raises(TransientError) as caught:
        client.tenant_settings()

    assert len(http.calls) == 3
    assert len(sleeps) == 2
    assert "500" in str(caught.value)
    assert "API Request Id: 7d1c0b7e" in str(caught.value)


def test_a_503_with_retry_after_waits_that_long(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.get(SETTINGS_URL, status=503, headers={"Retry-After": "2"}, body="")
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert sleeps == [2.0]


def test_an_html_502_from_a_proxy_is_retried_and_reported(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    client = make_client(max_attempts=2)
    http.get(SETTINGS_URL, status=502, body=html, content_type="text/html")
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert len(sleeps) == 1

    http.get(f"{BASE}/v3/WorkItems/XYZ", status=502, body=html, content_type="text/html")
    with pytest.raises(TransientError) as caught:
        client.work_item("XYZ")
    assert "502" in str(caught.value)
    assert "Bad Gateway" in str(caught.value)


def test_a_connection_error_is_retried(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.get(SETTINGS_URL, body=requests.ConnectionError("connection reset by peer"))
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert len(http.calls) == 2
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    "timeout",
    [
        pytest.param(requests.exceptions.ReadTimeout("read timed out"), id="read"),
        pytest.param(requests.exceptions.ConnectTimeout("connect timed out"), id="connect"),
    ],
)
def test_a_timeout_every_time_becomes_transient_after_max_attempts(
    http: responses.RequestsMock,
    make_client: Callable[..., KarbonClient],
    sleeps: list[float],
    timeout: requests.exceptions.Timeout,
) -> None:
    client = make_client(max_attempts=3)
    http.get(SETTINGS_URL, body=timeout)

    with pytest.raises(TransientError) as caught:
        client.tenant_settings()

    assert len(http.calls) == 3
    assert len(sleeps) == 2
    assert "tenant settings" in str(caught.value)
    assert isinstance(caught.value.__cause__, requests.exceptions.Timeout)


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("status", "body", "karbon_says"),
    [
        pytest.param(
            401,
            {"error": {"statusCode": "401", "message": "JWT not present."}},
            "JWT not present.",
            id="401-error-envelope",
        ),
        pytest.param(
            401,
            {"statusCode": "401", "message": "Authorization has been denied."},
            "Authorization has been denied.",
            id="401-flat",
        ),
        pytest.param(
            403,
            karbon_error("4021", "The API application does not have access to this resource."),
            "does not have access",
            id="403",
        ),
    ],
)
def test_refused_credentials_are_a_config_error_and_never_retried(
    http: responses.RequestsMock,
    client: KarbonClient,
    sleeps: list[float],
    status: int,
    body: dict[str, Any],
    karbon_says: str,
) -> None:
    http.get(SETTINGS_URL, status=status, json=body)

    with pytest.raises(ConfigError) as caught:
        client.tenant_settings()

    assert len(http.calls) == 1
    assert sleeps == []
    message = str(caught.value)
    assert HINT in message
    assert karbon_says in message
    assert str(status) in message


def test_the_credentials_hint_is_the_one_configured(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient]
) -> None:
    client = make_client(credentials_hint="set KARBON_ACCESS_KEY for smith-cpa")
    http.get(SETTINGS_URL, status=401, json={"statusCode": "401", "message": "JWT not present."})

    with pytest.raises(ConfigError, match="set KARBON_ACCESS_KEY for smith-cpa"):
        client.tenant_settings()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(karbon_error("4004", "No Work Item found for provided key"), id="envelope"),
        pytest.param({"statusCode": "404", "message": "Not found"}, id="flat"),
    ],
)
def test_a_missing_work_item_is_none_after_one_request(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float], body: dict[str, Any]
) -> None:
    http.get(WORK_ITEM_URL, status=404, json=body)

    assert client.work_item("2LPSrkzbYrn4") is None
    assert len(http.calls) == 1
    assert sleeps == []


def test_a_found_work_item_is_returned(http: responses.RequestsMock, client: KarbonClient) -> None:
    detail = {"WorkItemKey": "2LPSrkzbYrn4", "PrimaryStatus": "Completed"}
    http.get(WORK_ITEM_URL, json=detail)

    assert client.work_item("2LPSrkzbYrn4") == detail


def test_a_bad_query_is_rejected_with_karbons_code_and_not_retried(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.get(
        f"{BASE}/v3/WorkItems",
        status=400,
        json=karbon_error("4002", "Logical operator 'NotEqual' is not allowed."),
    )

    with pytest.raises(RejectedError) as caught:
        list(client.work_items("PrimaryStatus ne 'Completed'"))

    assert caught.value.code == "4002"
    assert "Logical operator 'NotEqual' is not allowed." in str(caught.value)
    assert len(http.calls) == 1
    assert sleeps == []


def test_an_invalid_model_names_the_offending_field(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.post(
        f"{BASE}/v3/WebhookSubscriptions",
        status=400,
        json=karbon_error(
            "4003",
            "Invalid Model.",
            details={
                "code": "4003",
                "target": "subscription.TargetUrl",
                "message": "TargetUrl must be an absolute URL.",
            },
        ),
    )

    with pytest.raises(RejectedError) as caught:
        client.subscribe("Work", "not-a-url", None)

    message = str(caught.value)
    assert caught.value.code == "4003"
    assert "Invalid Model." in message
    assert "subscription.TargetUrl" in message
    assert "TargetUrl must be an absolute URL." in message
    assert len(http.calls) == 1
    assert sleeps == []


# ---------------------------------------------------------------------- request budget


def test_the_121st_request_in_a_minute_waits_for_the_window_to_free(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient]
) -> None:
    clock = FakeClock(start=0.0)
    client = make_client(budget=RequestBudget(120, monotonic=clock.monotonic, sleep=clock.sleep))
    sent_at: list[float] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent_at.append(clock.last_read())
        return 200, {}, json.dumps(SETTINGS)

    http.add_callback(responses.GET, SETTINGS_URL, callback=answer)

    client.tenant_settings()  # at t=0
    clock.advance(30.0)
    for _ in range(119):  # at t=30: the window now holds 120
        client.tenant_settings()
    assert clock.sleeps == []

    client.tenant_settings()  # the 121st: must wait until the t=0 request is 60 s old

    assert clock.sleeps == [30.0]
    assert client.budget.waited == 30.0
    assert sent_at[-1] == 60.0
    assert len(http.calls) == 121


def test_retries_spend_the_budget_too(
    http: responses.RequestsMock, make_client: Callable[..., KarbonClient], sleeps: list[float]
) -> None:
    clock = FakeClock(start=0.0)
    client = make_client(budget=RequestBudget(2, monotonic=clock.monotonic, sleep=clock.sleep))
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "1"}, json=RATE_LIMITED)
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "1"}, json=RATE_LIMITED)
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert sleeps == [1.0, 1.0]
    # the retry sleeps are injected and do not move this clock: the third attempt is the one
    # that finds two requests already in the window
    assert clock.sleeps == [60.0]


@pytest.fixture
def eager_thread_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, so a missing lock shows."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_budget_race(threads: int, each: int, per_minute: int) -> tuple[list[float], float, float]:
    """`threads` threads each take `each` requests from one budget; returns the send times,
    the budget's own total wait, and the sum of the sleeps it asked for."""
    clock = FakeClock(start=0.0)
    budget = RequestBudget(per_minute, monotonic=clock.monotonic, sleep=clock.sleep)
    stamps: list[float] = []
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(each):
                budget.acquire()
                stamps.append(clock.last_read())
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            failures.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=5)
    assert failures == []
    assert not any(worker.is_alive() for worker in workers)
    return stamps, budget.waited, sum(clock.sleeps)


@pytest.mark.usefixtures("eager_thread_switching")
def test_the_budget_holds_under_concurrent_threads() -> None:
    # A check-then-append race only shows now and then, so run the race many times (~0.2 s);
    # without the lock about one round in ten lets a sixth request into a minute.
    for _ in range(50):
        stamps, waited, slept = run_budget_race(threads=16, each=30, per_minute=5)
        # 480 requests at 5 a minute: exactly five in each minute, none early, none lost
        assert sorted(stamps) == [60.0 * (n // 5) for n in range(480)]
        assert waited == pytest.approx(slept)


def test_a_budget_needs_at_least_one_request_a_minute() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        RequestBudget(0)


# ---------------------------------------------------------------------- parse_retry_after

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("7", 7.0, id="delta"),
        pytest.param(" 7 ", 7.0, id="padded"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("2.5", 2.5, id="fraction"),
        pytest.param("-5", 0.0, id="negative-clamped"),
        pytest.param("Mon, 02 Mar 2026 09:00:30 GMT", 30.0, id="http-date"),
        pytest.param("Mon, 02 Mar 2026 09:00:30 -0000", 30.0, id="http-date-unknown-zone"),
        pytest.param("Mon, 02 Mar 2026 10:00:30 +0100", 30.0, id="http-date-offset"),
        pytest.param("Mon, 02 Mar 2026 08:59:00 GMT", 0.0, id="http-date-past"),
    ],
)
def test_parse_retry_after_reads_seconds_and_dates(header: str, seconds: float) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("soon", id="word"),
        pytest.param("7 seconds", id="with-unit"),
        pytest.param("Mon, 32 Foo 2026", id="broken-date"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="infinity"),
    ],
)
def test_parse_retry_after_ignores_what_it_cannot_read(header: str | None) -> None:
    assert parse_retry_after(header, now=NOW) is None


def test_a_garbage_retry_after_falls_back_to_backoff(
    http: responses.RequestsMock, client: KarbonClient, sleeps: list[float]
) -> None:
    http.get(SETTINGS_URL, status=429, headers={"Retry-After": "nan"}, json=RATE_LIMITED)
    http.get(SETTINGS_URL, json=SETTINGS)

    assert client.tenant_settings() == SETTINGS
    assert len(sleeps) == 1
    assert sleeps[0] > 0  # backed off, not hammered
