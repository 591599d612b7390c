"""One structlog configuration for every Mailplane process.

JSON lines when stderr is not a TTY, a console renderer otherwise. Event names are
constants and data travels in key/values (structlog's recommended practice).
Records of the standard library's ``logging`` (uvicorn, asyncio, grpc), Python's
warnings, and an exception nobody caught are rendered the same way (structlog's
``ProcessorFormatter``), so a process's every line on stderr is one record.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configures structlog and the stdlib root logger.

    Args:
        level: a stdlib level name (``info``, ``debug`` …).
        fmt: ``auto`` (JSON unless stderr is a TTY), ``json`` or ``console``.
    """
    json_lines = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # orjson renders bytes, written whole by BytesLogger: one write per line, so the
    # lines of processes sharing a stream never interleave mid-line.
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json_lines
        else structlog.dev.ConsoleRenderer()
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(file=sys.stderr.buffer)
            if json_lines
            else structlog.PrintLoggerFactory(file=sys.stderr)
        ),
        cache_logger_on_first_use=False,  # so tests can capture every line
    )
    foreign = logging.StreamHandler(sys.stderr)
    foreign.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer()
                if json_lines
                else structlog.dev.ConsoleRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [foreign]
    root.setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    """``sys.excepthook``: an exception that ends the process, as one record."""
    get_logger("mailplane").critical("uncaught_exception", exc_info=(kind, error, trace))


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Returns a bound logger carrying ``logger_name=name``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger
