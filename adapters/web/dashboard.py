"""The dashboard: server-rendered pages over the state store (pipeline, attention, clients, aging,
cash forecast, leakage, audit) and the admin's actions (retry, approve, void). Work in progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from scheduler.bootstrap import App


def dashboard_routes(application: App, *, token: str | None = None) -> list[BaseRoute]:
    """The dashboard's routes, to mount at `/` beside `/webhooks/...`, `/healthz`, `/metrics`.

    `token`: required on every page when given; when None it is read from the environment
    variable `[server] dashboard_token_env` names, and a non-loopback `[server] host` without
    one refuses every page."""

    async def pipeline(request: Request) -> Response:
        return HTMLResponse("<h1>Pipeline</h1>")

    return [Route("/", pipeline, methods=["GET"])]
