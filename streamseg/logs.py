"""Structured logs: one JSON object per line, for log shippers (``streamseg --log-format json ...``).

Fields: ``ts`` (Unix seconds), ``level``, ``logger``, ``msg`` (the formatted message), and, for the ``key=value``
pairs that live-stream messages carry (``stream_down source=cam1 reason='...'``), each pair as its own field;
``exc`` holds a traceback when there is one. Credentials are redacted before formatting (``streamseg.redact``).
"""

from __future__ import annotations

import json
import logging
import re

_PAIR = re.compile(r"(?P<key>[a-z_]+)=(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry = {"ts": round(record.created, 6), "level": record.levelname, "logger": record.name, "msg": message}
        head = message.split(" ", 1)[0]
        if re.fullmatch(r"[a-z_]+", head) and "=" in message:
            entry["event"] = head
            for match in _PAIR.finditer(message):
                value = match["value"]
                if value[:1] in "'\"" and value[-1:] == value[:1]:
                    value = value[1:-1]
                entry.setdefault(match["key"], value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) the :class:`JsonFormatter`."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())
