"""How every command line reports a user's mistake: one line saying what is wrong and what to do, no traceback.

A mistake is an exception the command raises for bad input (a flag, a path, a config that cannot run as asked):
``ValueError`` and ``FileNotFoundError`` and their subclasses. Its traceback is logged at DEBUG level;
``OPENPI_DEBUG=1`` raises it instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
DEBUG_ENV = "OPENPI_DEBUG"
logger = logging.getLogger(__name__)


def run(main: Callable[[], T]) -> T:
    """``main()``; a user error exits with status 1 and the line ``error: <message>`` on stderr."""
    try:
        return main()
    except USER_ERRORS as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        logger.debug("Traceback of the error below", exc_info=True)
        sys.exit(f"error: {e}")
