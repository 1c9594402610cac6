"""Karbon API v3 over `requests`: both auth headers on every call, gzip, explicit timeouts, OData
paging by following `@odata.nextLink` verbatim, retries (tenacity) honouring `Retry-After`, and a
client-side budget under Karbon's 120 requests/minute per account."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import requests

from adapters.http import RequestBudget, call_with_retries
from adapters.karbon.errors import KarbonNotFound, raise_for
from adapters.observability import count_calls
from connector.domain.errors import TransientError

DEFAULT_BASE_URL = "https://api.karbonhq.com"
DEFAULT_BUDGET_PER_MINUTE = 100  # Karbon allows 120; keep headroom for the admin's other tools
WEBHOOK_TYPES = ("Work", "Contact")


class KarbonClient:
    """One Karbon account (one AccessKey) of one API application (one bearer token)."""

    def __init__(
        self,
        *,
        bearer_token: str,
        access_key: str,
        base_url: str = DEFAULT_BASE_URL,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 30.0),
        budget: RequestBudget | None = None,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        credentials_hint: str = "check the Karbon API token and the firm's AccessKey",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = count_calls(session or requests.Session(), "karbon")
        self._session.headers.update(
            {
                "Authorization": f"Bearer {bearer_token}",
                "AccessKey": access_key,
                "Accept": "application/json",
                "Accept-Encoding": "gzip",
            }
        )
        self._timeout = timeout
        self.budget = budget or RequestBudget(DEFAULT_BUDGET_PER_MINUTE, sleep=sleep)
        self._max_attempts = max_attempts
        self._max_wait = max_wait
        self._sleep = sleep
        self._hint = credentials_hint
        self.requests_sent = 0

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ transport

    def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> requests.Response:
        def attempt() -> requests.Response:
            self.budget.acquire()
            self.requests_sent += 1
            try:
                response = self._session.request(
                    method, url, params=params, json=json, timeout=self._timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(f"Karbon unreachable on {what}: {exc}") from exc
            raise_for(response, what, self._hint)
            return response

        return call_with_retries(
            attempt, max_attempts=self._max_attempts, max_wait=self._max_wait, sleep=self._sleep
        )

    def get(self, path: str, what: str, params: Mapping[str, str] | None = None) -> Any:
        return self._send("GET", f"{self.base_url}{path}", what, params=params).json()

    def get_or_none(self, path: str, what: str) -> Any:
        try:
            return self.get(path, what)
        except KarbonNotFound:
            return None

    def pages(self, path: str, what: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every row of an OData list, page by page, following `@odata.nextLink` verbatim."""
        body = self.get(path, what, params)
        while True:
            yield from body.get("value", [])
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return
            body = self._send("GET", next_link, what).json()

    # ------------------------------------------------------------------ resources

    def work_items(self, odata_filter: str | None = None) -> Iterator[dict[str, Any]]:
        params = {"$top": "100"}
        if odata_filter:
            params["$filter"] = odata_filter
        # no $orderby: Karbon's default order (WorkItemKey) is unique, so pages never overlap
        return self.pages("/v3/WorkItems", f"list work items ({odata_filter or 'all'})", params)

    def work_item(self, key: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.get_or_none(f"/v3/WorkItems/{key}", f"work item {key}")
        return found

    def client(self, key: str, client_type: str) -> dict[str, Any] | None:
        path = {
            "Contact": "/v3/Contacts/",
            "Organization": "/v3/Organizations/",
            "ClientGroup": "/v3/ClientGroups/",
        }.get(client_type)
        if path is None:
            return None
        found: dict[str, Any] | None = self.get_or_none(
            f"{path}{key}", f"{client_type.lower()} {key}"
        )
        return found

    def tenant_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = self.get("/v3/TenantSettings", "tenant settings")
        return settings

    def time_entries(self, work_item_key: str) -> list[dict[str, Any]]:
        return list(
            self.pages(
                "/v3/IndividualTimeEntries",
                f"time entries of {work_item_key}",
                {"$filter": f"WorkItemKey eq '{_quote(work_item_key)}'"},
            )
        )

    def subscription(self, webhook_type: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.get_or_none(
            f"/v3/WebhookSubscriptions/{webhook_type}", f"{webhook_type} webhook subscription"
        )
        return found

    def subscribe(self, webhook_type: str, target_url: str, signing_key: str | None) -> None:
        body = {"TargetUrl": target_url, "WebhookType": webhook_type}
        if signing_key:
            body["SigningKey"] = signing_key
        self._send(
            "POST",
            f"{self.base_url}/v3/WebhookSubscriptions",
            f"subscribe to {webhook_type} webhooks",
            json=body,
        )


def _quote(value: str) -> str:
    """An OData string literal body: single quotes are doubled."""
    return value.replace("'", "''")
