"""Keep injected credentials out of every log line, whoever writes it.

Addons try not to log secrets, but a URL with an injected query parameter or an
upstream's error message can carry one into a log line from any module, mitmproxy's
own included. This filter sits on the root logger's handlers (where mitmproxy's
terminal log lives) and replaces every known secret value before a record is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from addons.core.secretforms import REDACTED


class SecretScrubber(logging.Filter):
    def __init__(self) -> None:
        super().__init__("portcullis-secret-scrubber")
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


SCRUBBER = SecretScrubber()


def set_secrets(values: Iterable[str]) -> None:
    """The values to scrub from now on (longest first, so no fragment survives)."""
    SCRUBBER.secrets = tuple(sorted({v for v in values if v}, key=len, reverse=True))


def install(logger: logging.Logger | None = None) -> None:
    """Attach the scrubber to every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if SCRUBBER not in handler.filters:
            handler.addFilter(SCRUBBER)
