"""Client notices by email through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from adapters.email.smtp import SmtpNotifier, SmtpOptions
from connector.domain.errors import RejectedError, TransientError
from connector.domain.ids import ClientKey, IdempotencyKey
from connector.ports import Notice


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def notice(email: str | None = "ap@acme.example") -> Notice:
    return Notice(
        ClientKey("CL-ACME"),
        "Acme LLC",
        email,
        "Smith & Co CPAs: your Monthly bookkeeping fee from 1 January 2027",
        "From 1 January 2027, your fee changes from 450.00 USD to 468.00 USD.",
    )


def test_a_notice_is_delivered_with_a_message_id_from_its_key(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    notifier = SmtpNotifier(
        SmtpOptions(
            "127.0.0.1", port, starttls=False, from_address="billing@smithcpa.example",
            from_name="Smith & Co CPAs",
        )
    )  # fmt: skip

    first = notifier.send(notice(), IdempotencyKey("notice:smith-cpa:CL-ACME:close:2027-01-01:0"))
    again = notifier.send(notice(), IdempotencyKey("notice:smith-cpa:CL-ACME:close:2027-01-01:0"))

    assert first == again  # a resend after a crash carries the same Message-ID
    (rcpt, message), _ = inbox.messages
    assert rcpt == ["ap@acme.example"]
    assert message["Subject"].startswith("Smith & Co CPAs: your Monthly bookkeeping fee")
    assert message["From"] == "Smith & Co CPAs <billing@smithcpa.example>"
    assert message["Message-ID"] == first
    assert "468.00 USD" in message.get_payload()


def test_no_address_is_a_rejection_and_no_server_is_transient(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    options = SmtpOptions("127.0.0.1", port, starttls=False, from_address="b@smithcpa.example")

    with pytest.raises(RejectedError, match=r'clients\."CL-ACME"'):
        SmtpNotifier(options).send(notice(email=None), IdempotencyKey("n1"))
    down = SmtpOptions("127.0.0.1", free_port(), starttls=False, from_address="b@x.example")
    with pytest.raises(TransientError, match="could not email"):
        SmtpNotifier(down).send(notice(), IdempotencyKey("n2"))
    assert inbox.messages == []


def test_the_password_never_shows_in_a_repr() -> None:
    options = SmtpOptions("smtp.example.com", username="billing", password="hunter2-secret")
    assert "hunter2" not in repr(options) and "hunter2" not in repr(SmtpNotifier(options).options)
