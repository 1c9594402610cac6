"""The Karbon emulator over real HTTP: auth, OData paging and refusals, the status spelling trap,
rate limits, injected faults, webhook subscriptions and signed, coalesced, retried deliveries."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from werkzeug.wrappers import Request, Response

from adapters.emulation.server import EmulatorServer
from adapters.emulation.specs import missing_reason, spec_path
from adapters.karbon.emulator import KARBON_SPEC, KarbonEmulator

AUTH = {"Authorization": "Bearer app-token-0000", "AccessKey": "eyJfirm"}
SIGNING_KEY = "signing-key-0123456789"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SUMMARY_TYPE = "#KarbonService.WorkItemSummaryDTO"
BY_ASSIGNEE = "AssigneeEmailAddress eq 'preparer@example.com'"


class Clock:
    """A clock the test moves by hand; the emulator reads it for rate limits and webhooks."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@dataclass
class Receiver:
    """A webhook target that records what it got and answers `status`."""

    status: int = 200
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def handle(self, request: Request) -> Response:
        self.received.append((request.get_data(), dict(request.headers)))
        return Response("ok", status=self.status)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in self.received]


def require_spec() -> None:
    if spec_path(KARBON_SPEC) is None:
        pytest.skip(missing_reason(KARBON_SPEC))


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_emulator(clock: Clock) -> Iterator[Callable[..., KarbonEmulator]]:
    started: list[KarbonEmulator] = []

    def make(**options: Any) -> KarbonEmulator:
        emulator = KarbonEmulator(clock=clock.now, seed=7, **options)
        emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()
    for emulator in started:
        assert emulator.internal_errors == []


@pytest.fixture
def emulator(make_emulator: Callable[..., KarbonEmulator]) -> KarbonEmulator:
    return make_emulator()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    # One target for the module: stopping a server costs a serve-loop poll (0.5 s).
    target = Receiver()
    server = EmulatorServer(target.handle)
    target.url = server.start() + "/hooks/karbon"
    yield target
    server.stop()


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    receiver_server.status = 200
    receiver_server.received.clear()
    return receiver_server


def seed_client(emulator: KarbonEmulator, key: str = "4ncPZ7q96SGc", **options: Any) -> str:
    emulator.add_client(key, options.pop("name", "Acme Corporation"), **options)
    return key


def subscribe(
    http: requests.Session,
    emulator: KarbonEmulator,
    url: str,
    webhook_type: str = "Work",
    signing_key: str | None = SIGNING_KEY,
) -> requests.Response:
    body: dict[str, Any] = {"TargetUrl": url, "WebhookType": webhook_type}
    if signing_key is not None:
        body["SigningKey"] = signing_key
    return http.post(f"{emulator.url}/v3/WebhookSubscriptions", json=body)


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": AUTH["Authorization"]}, id="no-access-key"),
        pytest.param({"AccessKey": AUTH["AccessKey"]}, id="no-bearer"),
    ],
)
def test_both_auth_headers_are_required(emulator: KarbonEmulator, headers: dict[str, str]) -> None:
    answer = requests.get(f"{emulator.url}/v3/WorkItems", headers=headers, timeout=5)

    assert answer.status_code == 401
    assert answer.json() == {"error": {"statusCode": "401", "message": "JWT not present."}}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Bearer wrong", "AccessKey": "eyJfirm"}, id="bad-token"),
        pytest.param({**AUTH, "AccessKey": "eyJstranger"}, id="unknown-key"),
    ],
)
def test_wrong_credentials_get_401(emulator: KarbonEmulator, headers: dict[str, str]) -> None:
    answer = requests.get(f"{emulator.url}/v3/TenantSettings", headers=headers, timeout=5)

    assert answer.status_code == 401
    assert answer.json()["error"]["statusCode"] == "401"


def test_a_revoked_access_key_gets_401_while_other_accounts_go_on(
    make_emulator: Callable[..., KarbonEmulator],
) -> None:
    emulator = make_emulator(access_keys=("eyJfirmA", "eyJfirmB"))
    bearer = AUTH["Authorization"]
    url = f"{emulator.url}/v3/TenantSettings"
    assert requests.get(url, headers={"Authorization": bearer, "AccessKey": "eyJfirmA"}).ok

    emulator.revoke("eyJfirmA")

    revoked = requests.get(url, headers={"Authorization": bearer, "AccessKey": "eyJfirmA"})
    other = requests.get(url, headers={"Authorization": bearer, "AccessKey": "eyJfirmB"})
    assert revoked.status_code == 401
    assert revoked.json()["error"]["statusCode"] == "401"
    assert other.status_code == 200


# -- lists, paging and the status spelling trap -----------------------------------------------


def test_lists_page_by_100_with_next_link_only_while_more_rows_exist(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    client = seed_client(emulator)
    for n in range(250):
        emulator.add_work_item(
            client_key=client,
            title=f"Return {n:03}",
            work_type="Payroll" if n % 5 < 2 else "Tax Return",  # 100 payroll items
            start_date=date(2025, 1, 1) + timedelta(days=n % 97),
        )
    first = http.get(
        f"{emulator.url}/v3/WorkItems",
        params={"$orderby": "StartDate", "$filter": BY_ASSIGNEE},
    ).json()

    keys: list[str] = []
    starts: list[str] = []
    links: list[str] = []
    page = first
    while True:
        assert page["@odata.count"] == 250
        assert {item["@odata.type"] for item in page["value"]} == {SUMMARY_TYPE}
        keys += [item["WorkItemKey"] for item in page["value"]]
        starts += [item["StartDate"] for item in page["value"]]
        link = page.get("@odata.nextLink")
        if link is None:
            break
        links.append(link)
        page = http.get(link).json()

    assert [len(first["value"]), len(keys)] == [100, 250]
    assert len(set(keys)) == 250
    assert starts == sorted(starts)
    assert len(links) == 2
    assert all(link.startswith(f"{emulator.url}/v3/WorkItems?") for link in links)
    assert "$skip=100" in links[0] and "$skip=200" in links[1]
    assert all("$orderby=StartDate" in link and "$filter=Assignee" in link for link in links)
    exactly_100 = http.get(
        f"{emulator.url}/v3/WorkItems", params={"$filter": "WorkType eq 'Payroll'"}
    ).json()
    assert len(exactly_100["value"]) == 100
    assert "@odata.nextLink" not in exactly_100
    assert emulator.list_calls() == 4
    assert emulator.detail_calls() == 0
    assert emulator.violations() == []


def test_primary_status_is_spaced_in_lists_and_unspaced_in_detail_and_filters_need_spaces(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    key = emulator.add_work_item(
        client_key=seed_client(emulator),
        title="2025 1040",
        primary="InProgress",
        secondary="Review",
    )
    listed = http.get(f"{emulator.url}/v3/WorkItems").json()["value"][0]
    detail = http.get(f"{emulator.url}/v3/WorkItems/{key}").json()

    def count(expression: str) -> int:
        answer = http.get(f"{emulator.url}/v3/WorkItems", params={"$filter": expression})
        assert answer.status_code == 200
        return int(answer.json()["@odata.count"])

    assert listed["PrimaryStatus"] == "In Progress"
    assert listed["WorkStatus"] == "In Progress - Review"
    assert (detail["PrimaryStatus"], detail["SecondaryStatus"]) == ("InProgress", "Review")
    assert count("PrimaryStatus eq 'In Progress'") == 1
    assert count("PrimaryStatus eq 'InProgress'") == 0
    assert count("WorkStatus eq 'In Progress - Review' and contains(Title, '1040')") == 1
    assert count("(contains(WorkType, 'tax')) and StartDate ge 2026-03-02") == 1
    assert count("StartDate le 2026-03-01T23:59:59Z") == 0


def test_fee_settings_appear_on_the_detail_only(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    client = seed_client(emulator)
    fixed = emulator.add_work_item(client_key=client, title="Fixed", fee=Decimal("5150.20"))
    hourly = emulator.add_work_item(
        client_key=client, title="Hourly", fee=Decimal("99"), fee_type="TimeAndMaterials"
    )

    listed = http.get(f"{emulator.url}/v3/WorkItems").json()["value"]
    fixed_detail = http.get(f"{emulator.url}/v3/WorkItems/{fixed}").json()
    hourly_detail = http.get(f"{emulator.url}/v3/WorkItems/{hourly}").json()

    assert all("FeeSettings" not in item for item in listed)
    assert fixed_detail["FeeSettings"] == {"FeeType": "FixedFee", "FeeValue": 5150.2}
    assert hourly_detail["FeeSettings"] == {"FeeType": "TimeAndMaterials", "FeeValue": None}
    assert fixed_detail["@odata.type"] == "#KarbonService.WorkItemDTO"
    identity = {"Accept-Encoding": "identity"}
    plain = http.get(f"{emulator.url}/v3/WorkItems/{fixed}", headers=identity)
    assert plain.headers.get("Content-Encoding") is None
    assert plain.json() == fixed_detail
    assert "UserRoleAssignments" in fixed_detail and "Description" in fixed_detail


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("$filter", "Title ne 'x'", "Logical operator 'NotEqual' is not allowed"),
        ("$filter", "startswith(Title, 'Tax')", "Function 'startswith' is not allowed"),
        ("$filter", "day(StartDate) eq 5", "Function 'day' is not allowed"),
        ("$select", "Title", "Query option 'Select' is not allowed"),
        ("$filter", "StartDate gt 2024-01-01", "Logical operator 'GreaterThan' is not allowed"),
        ("$filter", "Title eq 'a' or Title eq 'b'", "Logical operator 'Or' is not allowed"),
        (
            "$filter",
            "CompletedDate ge 2024-01-01",
            "The property 'CompletedDate' cannot be used in the $filter query option",
        ),
        (
            "$filter",
            "RelatedClientGroupKey eq 'x'",
            "The property 'RelatedClientGroupKey' cannot be used",
        ),
        ("$filter", "contains(ClientKey, 'x')", "The property 'ClientKey' cannot be used"),
        (
            "$filter",
            "Bogus eq 'x'",
            "Could not find a property named 'Bogus' on type 'KarbonService.WorkItemSummaryDTO'",
        ),
        ("$orderby", "Title", "Title"),
    ],
)
def test_unsupported_query_forms_get_400_4002_with_karbons_message(
    emulator: KarbonEmulator, http: requests.Session, option: str, value: str, message: str
) -> None:
    answer = http.get(f"{emulator.url}/v3/WorkItems", params={option: value})

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "4002"
    assert message in answer.json()["error"]["message"]


def test_top_over_100_is_refused_by_default(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    answer = http.get(f"{emulator.url}/v3/WorkItems", params={"$top": "130"})

    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "code": "4002",
        "message": "The limit of '100' for Top query has been exceeded. The value from the "
        "incoming request is '130'.",
    }


def test_top_over_100_is_silently_capped_in_cap_mode(
    make_emulator: Callable[..., KarbonEmulator], http: requests.Session
) -> None:
    emulator = make_emulator(top_over_100="cap")
    client = seed_client(emulator)
    for n in range(120):
        emulator.add_work_item(client_key=client, title=f"Item {n}")

    answer = http.get(f"{emulator.url}/v3/WorkItems", params={"$top": "500"})

    assert answer.status_code == 200
    assert len(answer.json()["value"]) == 100
    assert "$skip=100" in answer.json()["@odata.nextLink"]


# -- rate limit and injected faults -----------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_until_the_bucket_refills(
    make_emulator: Callable[..., KarbonEmulator], clock: Clock, http: requests.Session
) -> None:
    emulator = make_emulator(rate_limit_per_minute=3, access_keys=("eyJfirm", "eyJother"))
    url = f"{emulator.url}/v3/TenantSettings"
    assert [http.get(url).status_code for _ in range(3)] == [200, 200, 200]

    limited = http.get(url)
    other_account = http.get(url, headers={"AccessKey": "eyJother"})
    admin = requests.post(f"{emulator.url}/__admin/fail_next", json={"count": 0}, timeout=5)
    clock.advance(20)
    recovered = http.get(url)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "20"
    assert limited.json() == {
        "statusCode": "429",
        "message": "Rate limit is exceeded. Try again in 20 seconds.",
    }
    assert other_account.status_code == 200
    assert admin.status_code == 200
    assert recovered.status_code == 200


def test_fail_next_injects_5xx_with_an_api_request_id_then_recovers(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    url = f"{emulator.url}/v3/WorkItems"
    emulator.fail_next()
    first = http.get(url)
    emulator.fail_next(2, status=503)

    statuses = [http.get(url).status_code for _ in range(3)]

    assert first.status_code == 500
    assert first.json()["error"]["code"] == "5001"
    assert "API Request Id of" in first.json()["error"]["message"]
    assert statuses == [503, 503, 200]


# -- webhook subscriptions --------------------------------------------------------------------


def test_webhook_subscriptions_create_read_replace_and_delete(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    base = f"{emulator.url}/v3/WebhookSubscriptions"
    created = subscribe(http, emulator, "https://hooks.example.com/a")
    replaced = subscribe(http, emulator, "https://hooks.example.com/b")
    read = http.get(f"{base}/Work")
    subscribe(http, emulator, "https://hooks.example.com/c", webhook_type="Contact")

    deleted = http.delete(f"{base}/Work")
    after_delete = http.get(f"{base}/Work")
    contact_before = http.get(f"{base}/Contact")
    all_deleted = http.delete(base)
    contact_after = http.get(f"{base}/Contact")
    unknown_type = http.get(f"{base}/Bogus")

    assert created.status_code == 201
    assert "SigningKey" not in created.json()
    assert created.json()["TargetUrl"] == "https://hooks.example.com/a"
    assert "Location" in created.headers
    assert replaced.status_code == 201
    assert read.status_code == 200
    assert (read.json()["WebhookType"], read.json()["TargetUrl"]) == (
        "Work",
        "https://hooks.example.com/b",
    )
    assert "SigningKey" not in read.json()
    assert deleted.status_code == 204
    assert after_delete.status_code == 404
    assert after_delete.json() == {
        "error": {"code": "4004", "message": "No existing webhook subscription for Work"}
    }
    assert contact_before.status_code == 200
    assert all_deleted.status_code == 204
    assert contact_after.status_code == 404
    assert unknown_type.status_code == 404
    assert unknown_type.json()["error"]["code"] == "4004"
    assert emulator.subscriptions == {}


# -- deliveries -------------------------------------------------------------------------------


def test_changes_within_the_window_coalesce_into_one_signed_delivery(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    client = seed_client(emulator)
    first = emulator.add_work_item(client_key=client, title="A")
    second = emulator.add_work_item(client_key=client, title="B")
    assert subscribe(http, emulator, receiver.url).status_code == 201

    emulator.set_status(first, "In Progress", "Preparation")
    clock.advance(30)
    emulator.set_fee(first, Decimal("800"))
    last_change = clock.now()
    emulator.set_status(second, "Waiting", "Waiting on client")
    not_yet = emulator.pump()
    clock.advance(30)
    delivered = emulator.pump()

    assert not_yet == 0
    assert delivered == 1  # only the first item's window has closed
    assert receiver.bodies() == [
        {
            "ResourcePermaKey": first,
            "ResourceType": "Work",
            "ActionType": "Updated",
            "TimeStamp": stamp(last_change),
        }
    ]
    raw, headers = receiver.received[0]
    expected = hmac.new(SIGNING_KEY.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["Signature"] == expected
    assert headers["Content-Type"] == "application/json"
    clock.advance(30)
    assert emulator.pump() == 1
    assert receiver.bodies()[1]["ResourcePermaKey"] == second


def test_a_new_item_changed_within_the_window_is_reported_once_as_inserted(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    subscribe(http, emulator, receiver.url, signing_key=None)
    key = emulator.add_work_item(client_key=seed_client(emulator), title="New")
    emulator.set_status(key, "Ready To Start")
    clock.advance(60)

    assert emulator.pump() == 1
    assert receiver.bodies()[0]["ActionType"] == "Inserted"
    assert "Signature" not in receiver.received[0][1]  # no SigningKey, no signature


def test_failed_deliveries_retry_with_growing_delays_then_the_subscription_is_cancelled(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    receiver.status = 500
    key = emulator.add_work_item(client_key=seed_client(emulator), title="Down")
    subscribe(http, emulator, receiver.url)
    emulator.set_status(key, "Completed", "Filed")
    clock.advance(60)
    assert emulator.pump() == 1

    for attempt in range(1, 10):
        delay = 60 * 2 ** (attempt - 1)
        clock.advance(delay - 1)
        assert emulator.pump() == 0, f"retry {attempt} came before {delay}s"
        clock.advance(1)
        assert emulator.pump() == 1

    gone = http.get(f"{emulator.url}/v3/WebhookSubscriptions/Work")
    emulator.set_status(key, "Completed", "Billed")
    clock.advance(3600)

    assert len(receiver.received) == 10
    assert [d.status for d in emulator.deliveries] == [500] * 10
    assert gone.status_code == 404
    assert emulator.pump() == 0


def test_fail_deliveries_simulates_a_target_that_is_down_then_back(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    key = emulator.add_work_item(client_key=seed_client(emulator), title="Flaky")
    subscribe(http, emulator, receiver.url)
    emulator.fail_deliveries(2)
    emulator.set_status(key, "In Progress")

    clock.advance(60)
    emulator.pump()
    clock.advance(60)
    emulator.pump()
    clock.advance(120)
    emulator.pump()

    assert [d.status for d in emulator.deliveries] == [None, None, 200]
    assert len(receiver.received) == 1
    assert emulator.subscriptions["Work"]["ConsecutiveFailures"] == 0


def test_dropped_webhooks_change_state_but_are_never_delivered(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    client = seed_client(emulator)
    lost = emulator.add_work_item(client_key=client, title="Lost")
    kept = emulator.add_work_item(client_key=client, title="Kept")
    subscribe(http, emulator, receiver.url)
    emulator.drop_next_webhooks(1)

    emulator.set_status(lost, "Completed")
    emulator.set_status(kept, "Completed")
    clock.advance(60)
    emulator.pump()

    assert [body["ResourcePermaKey"] for body in receiver.bodies()] == [kept]
    assert emulator.work_item(lost)["PrimaryStatus"] == "Completed"


def test_payload_variants_seen_in_the_wild(
    make_emulator: Callable[..., KarbonEmulator],
    http: requests.Session,
    receiver: Receiver,
    clock: Clock,
) -> None:
    emulator = make_emulator(timestamp_key="Timestamp", work_resource_type="WorkItem")
    key = emulator.add_work_item(client_key=seed_client(emulator), title="Variant")
    subscribe(http, emulator, receiver.url)
    emulator.set_status(key, "Completed")
    clock.advance(60)
    emulator.pump()

    body = receiver.bodies()[0]
    assert body["ResourceType"] == "WorkItem"
    assert "Timestamp" in body and "TimeStamp" not in body


def test_client_changes_and_deletes_notify_with_their_own_types(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    client = seed_client(emulator, client_type="Contact", name="Jo Smith")
    key = emulator.add_work_item(client_key=client, title="Gone soon")
    subscribe(http, emulator, receiver.url, webhook_type="Contact")
    subscribe(http, emulator, receiver.url, webhook_type="Work")

    emulator.update_client(client, external_key="QBO-77")
    emulator.delete_work_item(key)
    clock.advance(60)
    emulator.pump()
    missing = http.get(f"{emulator.url}/v3/WorkItems/{key}")

    bodies = receiver.bodies()
    actions = {(b["ResourceType"], b["ResourcePermaKey"], b["ActionType"]) for b in bodies}
    assert actions == {("Contact", client, "Updated"), ("Work", key, "Deleted")}
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"code": "4004", "message": "No Work Item found for provided key"}
    }


def test_auto_deliver_sends_without_a_manual_pump(
    make_emulator: Callable[..., KarbonEmulator],
    http: requests.Session,
    receiver: Receiver,
    clock: Clock,
) -> None:
    emulator = make_emulator(auto_deliver=True)
    key = emulator.add_work_item(client_key=seed_client(emulator), title="Auto")
    subscribe(http, emulator, receiver.url)
    emulator.set_status(key, "Completed")
    clock.advance(60)

    deadline = time.monotonic() + 3
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)

    assert [b["ResourcePermaKey"] for b in receiver.bodies()] == [key]


# -- work item writes and Karbon-side status changes ------------------------------------------


def test_status_changes_set_and_clear_completed_date_and_drop_foreign_secondaries(
    emulator: KarbonEmulator, clock: Clock
) -> None:
    key = emulator.add_work_item(
        client_key=seed_client(emulator), title="Books", work_type="Bookkeeping"
    )

    emulator.set_status(key, "In Progress", "Documents received")  # Tax Return only
    foreign = emulator.work_item(key)
    emulator.set_status(key, "InProgress", "Review")
    offered = emulator.work_item(key)
    emulator.set_status(key, "Completed", "Billed")
    completed = emulator.work_item(key)
    clock.advance(3600)
    emulator.set_status(key, "Completed", "Billed")
    still = emulator.work_item(key)
    emulator.set_status(key, "Waiting")
    reopened = emulator.work_item(key)

    assert (foreign["PrimaryStatus"], foreign["SecondaryStatus"]) == ("InProgress", None)
    assert offered["SecondaryStatus"] == "Review"
    assert completed["CompletedDate"] == stamp(START)
    assert still["CompletedDate"] == stamp(START)
    assert reopened["CompletedDate"] is None


def test_post_put_and_patch_follow_karbons_rules_and_queue_webhooks(
    emulator: KarbonEmulator, http: requests.Session, receiver: Receiver, clock: Clock
) -> None:
    client = seed_client(emulator)
    subscribe(http, emulator, receiver.url)
    body: dict[str, Any] = {
        "AssigneeEmailAddress": "jo@example.com",
        "Title": "Payroll March",
        "ClientKey": client,
        "ClientType": "Organization",
        "StartDate": "2026-03-01T00:00:00Z",
        "WorkType": "Payroll",
        "PrimaryStatus": "Ready To Start",
        "FeeSettings": {"FeeType": "FixedFee", "FeeValue": 400},
    }

    created = http.post(f"{emulator.url}/v3/WorkItems", json=body)
    key = created.json()["WorkItemKey"]
    put = http.put(
        f"{emulator.url}/v3/WorkItems/{key}",
        json={**body, "PrimaryStatus": "Completed", "SecondaryStatus": "Documents received"},
    )
    after_put = http.get(f"{emulator.url}/v3/WorkItems/{key}").json()
    item_url = f"{emulator.url}/v3/WorkItems/{key}"
    patch_status = http.patch(item_url, json={"PrimaryStatus": "Waiting"})
    patch_title = http.patch(item_url, json={"Title": "Payroll Mar"})
    lone_secondary = {k: v for k, v in body.items() if k != "PrimaryStatus"}
    lone_secondary.update(Title="Payroll Mar", SecondaryStatus="Billed")
    put_secondary = http.put(item_url, json=lone_secondary)
    clock.advance(60)
    emulator.pump()

    assert created.status_code == 201
    assert created.headers["Location"].endswith(f"/v3/WorkItems('{key}')/KarbonService.WorkItemDTO")
    assert created.json()["PrimaryStatus"] == "ReadyToStart"
    assert created.headers["Content-Encoding"] == "gzip"  # requests asks for it by default
    assert put.status_code == 204
    assert (after_put["PrimaryStatus"], after_put["SecondaryStatus"]) == ("Completed", None)
    assert after_put["CompletedDate"] == stamp(START)
    assert after_put["FeeSettings"] == {"FeeType": "FixedFee", "FeeValue": 400}
    assert patch_status.status_code == 400
    assert patch_status.json()["error"]["code"] == "4002"
    assert patch_status.json()["error"]["message"].startswith("Invalid property to update")
    assert patch_title.status_code == 204
    assert put_secondary.status_code == 204
    final = emulator.work_item(key)
    assert (final["Title"], final["PrimaryStatus"], final["SecondaryStatus"]) == (
        "Payroll Mar",
        "Completed",
        "Billed",
    )
    assert [(b["ResourcePermaKey"], b["ActionType"]) for b in receiver.bodies()] == [
        (key, "Inserted")
    ]
    assert emulator.violations() == []


def test_hidden_clients_and_their_work_answer_404(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    hidden = seed_client(emulator, "HIDDEN000001", hidden=True)
    visible = seed_client(emulator, "VISIBLE00001", name="Beta LLC")
    secret = emulator.add_work_item(client_key=hidden, title="Secret")
    emulator.add_work_item(client_key=visible, title="Open")

    listed = http.get(f"{emulator.url}/v3/WorkItems").json()
    detail = http.get(f"{emulator.url}/v3/WorkItems/{secret}")
    organization = http.get(f"{emulator.url}/v3/Organizations/{hidden}")
    organizations = http.get(f"{emulator.url}/v3/Organizations").json()

    assert [item["Title"] for item in listed["value"]] == ["Open"]
    assert listed["@odata.count"] == 1
    assert detail.status_code == 404
    assert organization.status_code == 404
    assert organization.json()["error"] == {
        "code": "4004",
        "message": f"No organization exists with a key of {hidden}.",
    }
    assert [o["OrganizationKey"] for o in organizations["value"]] == [visible]


# -- clients, tenant settings, invoices, time entries -----------------------------------------


def test_clients_list_with_external_key_filter_and_last_modified(
    emulator: KarbonEmulator, http: requests.Session, clock: Clock
) -> None:
    contact = seed_client(
        emulator,
        "CONTACT00001",
        name="Jo Smith",
        client_type="Contact",
        user_defined_identifier="JO",
    )
    seed_client(emulator, "CONTACT00002", name="Al Jones", client_type="Contact")
    clock.advance(3600)
    emulator.update_client(contact, external_key="QBO-42")

    found = http.get(
        f"{emulator.url}/v3/Contacts", params={"$filter": "ExternalKey eq 'QBO-42'"}
    ).json()
    by_change = http.get(
        f"{emulator.url}/v3/Contacts", params={"$orderby": "LastModifiedDateTime desc"}
    ).json()
    contains_key = http.get(
        f"{emulator.url}/v3/Contacts", params={"$filter": "contains(ExternalKey, 'QBO')"}
    )
    detail = http.get(f"{emulator.url}/v3/Contacts/{contact}", params={"$expand": "BusinessCards"})
    unknown = http.get(f"{emulator.url}/v3/Contacts/NOPE00000000")
    lookup = f"{emulator.url}/v3/Contacts/GetContactByUserDefinedIdentifier(UserDefinedIdentifier="
    by_udi = http.get(lookup + "'JO')")
    no_udi = http.get(lookup + "'NOBODY')")

    assert [c["ContactKey"] for c in found["value"]] == [contact]
    assert found["value"][0]["LastModifiedDateTime"] == stamp(START + timedelta(hours=1))
    assert [c["ContactKey"] for c in by_change["value"]] == [contact, "CONTACT00002"]
    assert contains_key.status_code == 400
    assert (detail.json()["FirstName"], detail.json()["LastName"]) == ("Jo", "Smith")
    assert detail.json()["BusinessCards"][0]["EntityKey"] == contact
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "No Contact found for provided key"
    assert by_udi.json()["ContactKey"] == contact
    assert no_udi.status_code == 404
    assert emulator.violations() == []


def test_tenant_settings_scope_secondary_statuses_to_work_types(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    settings = http.get(f"{emulator.url}/v3/TenantSettings").json()

    statuses = {s["Name"]: s for s in settings["WorkStatuses"]}
    in_progress = {c["Name"]: c["WorkStatusKey"] for c in statuses["InProgress"]["Children"]}
    types = {t["Name"]: t["AvailableStatuses"] for t in settings["WorkTypes"]}
    assert set(statuses) == {"Planned", "ReadyToStart", "InProgress", "Waiting", "Completed"}
    assert list(in_progress) == ["Documents received", "Preparation", "Review"]
    assert set(types) == {"Tax Return", "Bookkeeping", "Advisory", "Payroll"}
    assert "In Progress" in types["Bookkeeping"]["Primary"]
    assert in_progress["Documents received"] in types["Tax Return"]["Secondary"]
    assert in_progress["Documents received"] not in types["Bookkeeping"]["Secondary"]


def test_custom_statuses_replace_the_default_set(
    make_emulator: Callable[..., KarbonEmulator], http: requests.Session
) -> None:
    emulator = make_emulator(statuses={"In Progress": ["Phase 1", "Phase 2"], "Completed": []})
    key = emulator.add_work_item(client_key=seed_client(emulator), title="Phased")
    emulator.set_status(key, "In Progress", "Phase 2")

    settings = http.get(f"{emulator.url}/v3/TenantSettings").json()

    children = {s["Name"]: [c["Name"] for c in s["Children"]] for s in settings["WorkStatuses"]}
    assert children["InProgress"] == ["Phase 1", "Phase 2"]
    assert children["Waiting"] == []
    assert emulator.work_item(key)["SecondaryStatus"] == "Phase 2"


def test_karbon_invoices_name_the_work_items_they_bill(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    client = seed_client(emulator)
    first = emulator.add_work_item(client_key=client, title="Q1")
    second = emulator.add_work_item(client_key=client, title="Q2")
    invoice = emulator.add_karbon_invoice(
        client_key=client, work_item_keys=[first, second], amount=Decimal("100.01")
    )

    awaiting = http.get(
        f"{emulator.url}/v3/Invoices",
        params={"$filter": "InvoiceStatus eq 'AwaitingPayment'", "$expand": "LineItems"},
    ).json()
    paid = http.get(f"{emulator.url}/v3/Invoices", params={"$filter": "InvoiceStatus eq 'Paid'"})
    detail = http.get(f"{emulator.url}/v3/Invoices/{invoice}", params={"$expand": "LineItems"})

    lines = awaiting["value"][0]["LineItems"]
    assert [line["BillableItemEntityKey"] for line in lines] == [first, second]
    assert sum(Decimal(str(line["Amount"])) for line in lines) == Decimal("100.01")
    assert paid.json()["@odata.count"] == 0
    assert detail.json()["InvoiceKey"] == invoice
    assert [line["BillableItemEntityKey"] for line in detail.json()["LineItems"]] == [
        first,
        second,
    ]


def test_time_entries_filter_by_work_item_and_carry_billed_status(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    client = seed_client(emulator)
    billed = emulator.add_work_item(client_key=client, title="T&M")
    other = emulator.add_work_item(client_key=client, title="Other")
    emulator.add_time_entry(billed, 90, billed_status="Billed")
    emulator.add_time_entry(other, 30)

    answer = http.get(
        f"{emulator.url}/v3/IndividualTimeEntries",
        params={"$filter": f"WorkItemKey eq '{billed}'"},
    ).json()
    counted = http.get(f"{emulator.url}/v3/IndividualTimeEntries", params={"$count": "true"}).json()

    assert [(e["WorkItemKey"], e["Minutes"], e["BilledStatus"]) for e in answer["value"]] == [
        (billed, 90, "Billed")
    ]
    assert answer["value"][0]["TotalCost"] == 225.0
    assert "@odata.count" not in answer  # this endpoint counts only when asked
    assert counted["@odata.count"] == 2


# -- admin over HTTP --------------------------------------------------------------------------


def test_admin_endpoints_drive_the_emulator_and_are_not_logged(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    admin = f"{emulator.url}/__admin"
    requests.post(f"{admin}/clients", json={"key": "ORG000000001", "name": "Acme"}, timeout=5)
    made = requests.post(
        f"{admin}/work_items",
        json={"client_key": "ORG000000001", "title": "Admin made", "fee": "250.50"},
        timeout=5,
    ).json()
    moved = requests.post(
        f"{admin}/work_items/{made['key']}/status",
        json={"primary": "Completed", "secondary": "Filed"},
        timeout=5,
    )
    missing = requests.post(f"{admin}/work_items/NOPE/status", json={"primary": "Waiting"})

    detail = http.get(f"{emulator.url}/v3/WorkItems/{made['key']}").json()
    assert moved.status_code == 200
    assert missing.status_code == 404
    assert (detail["PrimaryStatus"], detail["SecondaryStatus"]) == ("Completed", "Filed")
    assert detail["FeeSettings"]["FeeValue"] == 250.5
    assert [entry.path for entry in emulator.log.snapshot()] == [f"/v3/WorkItems/{made['key']}"]


# -- validation against Karbon's OpenAPI description ------------------------------------------


def test_requests_that_break_the_spec_are_refused_and_recorded(
    emulator: KarbonEmulator, http: requests.Session
) -> None:
    require_spec()
    client = seed_client(emulator)

    bogus_type = subscribe(http, emulator, "https://hooks.example.com/x", webhook_type="Bogus")
    no_title = http.post(
        f"{emulator.url}/v3/WorkItems",
        json={
            "AssigneeEmailAddress": "jo@example.com",
            "ClientKey": client,
            "ClientType": "Organization",
            "StartDate": "2026-03-01T00:00:00Z",
        },
    )
    invented = http.get(f"{emulator.url}/v3/WorkItems/2LPSrkzbYrn4/Tasks")

    violations = emulator.violations()
    assert bogus_type.status_code == 400
    assert no_title.status_code == 400
    assert no_title.json()["error"]["code"] == "4003"
    assert invented.status_code == 404
    assert any("Bogus" in v for v in violations)
    assert any("'Title' is a required property" in v for v in violations)
    assert any("/Tasks is not an operation in the spec" in v for v in violations)
    assert emulator.subscriptions == {}


def test_without_validation_nothing_is_recorded_but_karbons_own_checks_still_apply(
    make_emulator: Callable[..., KarbonEmulator], http: requests.Session
) -> None:
    emulator = make_emulator(validate=False)
    client = seed_client(emulator)

    answer = http.post(
        f"{emulator.url}/v3/WorkItems",
        json={
            "AssigneeEmailAddress": "jo@example.com",
            "ClientKey": client,
            "ClientType": "Organization",
            "StartDate": "2026-03-01T00:00:00Z",
        },
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "4003",
            "message": "Invalid Model.",
            "details": {
                "code": "InvalidProperty",
                "target": "workItem.Title",
                "message": "The Title field is required.",
            },
        }
    }
    assert emulator.violations() == []
