"""Keep third-party chatter out of a run's log.

open_clip reports routine steps ("Loaded … model config", "Model … creation process complete")
with `logging.info` on the ROOT logger, and Hydra sets the root level to INFO, so every run used to
print them between carbench's own lines. Only INFO-and-below records that open_clip's own files
sent to the root logger are dropped; its warnings and errors, and everybody else's INFO, still show.
"""

from __future__ import annotations

import logging
import os

#: Path fragment of the packages whose root-logger INFO records are dropped.
QUIET_PACKAGES: tuple[str, ...] = (f"{os.sep}open_clip{os.sep}",)


class DropThirdPartyInfo(logging.Filter):
    """Refuse root-logger records at INFO or below that come from a file of a `QUIET_PACKAGES` package."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or record.name != "root":
            return True
        return not any(p in (record.pathname or "") for p in QUIET_PACKAGES)


def quiet_third_party_info() -> None:
    """Install `DropThirdPartyInfo` on the root logger once (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(f, DropThirdPartyInfo) for f in root.filters):
        root.addFilter(DropThirdPartyInfo())
