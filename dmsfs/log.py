"""Logging set-up: JSON lines on stderr, one object per record."""

from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg"[, "exc"]} per line, for journald and jq alike."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:
        for chatty in ("hypercorn", "botocore", "boto3", "s3transfer"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
