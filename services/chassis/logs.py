"""One structlog configuration for every Mailplane process.

JSON lines when stderr is not a TTY, a console renderer otherwise. Event names are
constants and data travels in key/values (structlog's recommended practice).
"""

from __future__ import annotations

import logging
import sys

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
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """Returns a bound logger carrying ``logger_name=name``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(logger_name=name)
    return logger
