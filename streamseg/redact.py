"""Credential redaction for URLs and for any text that may quote one (FFmpeg errors, log lines, metric labels).

>>> redact_url("rtsp://admin:hunter2@10.0.0.7:554/stream1?token=abc")
'rtsp://***@10.0.0.7:554/stream1?token=***'
>>> secrets_of("rtsp://admin:p%40ss@cam/x")
('p%40ss', 'p@ss', 'admin')

Imports nothing else of streamseg, so every stage and the composition layer can use it.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@?#]*)@")
_SECRET_PARAMS = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|token|auth|key|secret|signature|sig|access_token|apikey|api_key)=)"
    r"(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with its user-info (``user:password@``) and secret-looking query values replaced by ``***``."""
    return redact(str(url))


def secrets_of(url: str) -> tuple[str, ...]:
    """The credential strings in ``url`` (password and user name, raw and percent-decoded), longest first: the
    pieces that must never be printed, also when a library quotes them outside a URL."""
    try:
        parts = urlsplit(str(url))
        raw_userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    except ValueError:
        return ()
    found: set[str] = set()
    if raw_userinfo:
        user, _, password = raw_userinfo.partition(":")
        for piece in (user, password, raw_userinfo):
            if piece:
                found.update({piece, unquote(piece)})
    for match in _SECRET_PARAMS.finditer(str(url)):
        if match["value"]:
            found.update({match["value"], unquote(match["value"])})
    # very short user names ("a") would mask unrelated text; passwords are masked whatever their length
    return tuple(sorted((s for s in found if len(s) >= 3 or s == _password(raw_userinfo)), key=len, reverse=True))


def _password(userinfo: str) -> str | None:
    return userinfo.partition(":")[2] or None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL user-info, secret query values and every string of ``secrets`` masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", str(text))
    text = _SECRET_PARAMS.sub(lambda m: f"{m['key']}{MASK}", text)
    for secret in secrets:
        if secret and secret in text:
            text = _standalone(secret).sub(MASK, text)
    return text


@functools.lru_cache(maxsize=256)
def _standalone(secret: str) -> re.Pattern:
    """``secret`` where it is not part of a longer word: user "cam" is masked in ``cam:pw@`` but "camera" stays."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])")


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's final message with :func:`redact` (URLs and ``secrets``).

    Attach it to handlers (not loggers: a logger's filters skip records from its children). Formatting happens
    here once, so ``%``-arguments that carry a URL are redacted too.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets = tuple(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hide these too (a camera added while running); thread-safe: the tuple is replaced, never changed."""
        self.secrets = tuple(sorted({*self.secrets, *secrets}, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not getattr(record, "_redacted_exc", False):
            # tracebacks quote exception messages: format now, redacted, and drop the live exception
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted, self.secrets)
            record.exc_info = None
        return True
