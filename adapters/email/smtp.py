"""Client notices by email over SMTP (the standard library's smtplib, STARTTLS and login when
configured). The message id is derived from the idempotency key, so a notice resent after a
crash carries the same Message-ID and mail clients thread or drop the copy."""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr

from connector.domain.errors import ConfigError, RejectedError, TransientError
from connector.domain.ids import IdempotencyKey
from connector.ports import Notice


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int = 587
    starttls: bool = True
    from_address: str = "billing@example.invalid"
    from_name: str = ""
    username: str | None = None
    password: str | None = None
    timeout: float = 20.0

    def __repr__(self) -> str:  # the password never reaches a log through repr
        return f"SmtpOptions(host={self.host!r}, port={self.port}, username={self.username!r})"


class SmtpNotifier:
    def __init__(self, options: SmtpOptions) -> None:
        self.options = options

    def send(self, notice: Notice, key: IdempotencyKey) -> str:
        if not notice.email:
            raise RejectedError(
                f"client {notice.client_key} has no email address: set "
                f'[clients."{notice.client_key}"] email, or send the notice by hand'
            )
        options = self.options
        domain = options.from_address.rpartition("@")[2] or "milestone-sync.local"
        message_id = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"
        message = EmailMessage()
        message["From"] = formataddr((options.from_name, options.from_address))
        message["To"] = formataddr((notice.client_name, notice.email))
        message["Subject"] = notice.subject
        message["Message-ID"] = message_id
        message.set_content(notice.body)
        try:
            with smtplib.SMTP(options.host, options.port, timeout=options.timeout) as smtp:
                if options.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if options.username:
                    smtp.login(options.username, options.password or "")
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError:
            raise ConfigError(
                f"the mail server {options.host} refused the login of {options.username!r}: "
                "check [notifications] username_env and password_env"
            ) from None
        except smtplib.SMTPRecipientsRefused:
            raise RejectedError(
                f"the mail server refused {notice.email} for client {notice.client_key}: fix "
                f'[clients."{notice.client_key}"] email'
            ) from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise TransientError(
                f"could not email the notice through {options.host}:{options.port}: "
                f"{type(exc).__name__}"
            ) from None
        return message_id
