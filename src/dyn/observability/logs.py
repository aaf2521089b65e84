"""Logging: one line per record, prefixed with the role that wrote it."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "role_logger", "setup_logging"]

ROOT = "dyn"


class _RoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        role = getattr(record, "role", None) or record.name.removeprefix(f"{ROOT}.")
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {role:<14} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "role": getattr(record, "role", None) or record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", *, json_logs: bool = False) -> None:
    """Send dyn's records to stderr, replacing any handler a previous call installed."""
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else _RoleFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def role_logger(component: str, replica: int = 0) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry ``component[replica]`` as their prefix."""
    role = component if replica == 0 else f"{component}[{replica}]"
    return logging.LoggerAdapter(logging.getLogger(f"{ROOT}.{component}"), {"role": role})
