"""open_clip's root-logger INFO chatter is dropped from runs; its warnings and everyone else's INFO are kept."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip

from carbench.engine.log_filters import DropThirdPartyInfo, quiet_third_party_info


def _record(pathname: str, level: int, name: str = "root") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, "msg", None, None)


def test_filter_drops_open_clip_info_only():
    f = DropThirdPartyInfo()
    oc_file = str(Path(open_clip.__file__).parent / "factory.py")
    assert not f.filter(_record(oc_file, logging.INFO))
    assert not f.filter(_record(oc_file, logging.DEBUG))
    assert f.filter(_record(oc_file, logging.WARNING))  # warnings still reach the user
    assert f.filter(_record("/somewhere/carbench/engine/loop.py", logging.INFO))
    assert f.filter(_record(oc_file, logging.INFO, name="carbench.engine.loop"))  # a named logger is not root chatter


def test_building_an_open_clip_model_logs_nothing_at_info_once_installed(caplog):
    quiet_third_party_info()
    quiet_third_party_info()  # idempotent
    root = logging.getLogger()
    try:
        assert sum(isinstance(f, DropThirdPartyInfo) for f in root.filters) == 1
        with caplog.at_level(logging.INFO):
            open_clip.create_model("RN50", pretrained=None)
        assert not [r for r in caplog.records if "open_clip" in r.pathname and r.levelno <= logging.INFO]
    finally:
        for f in [f for f in root.filters if isinstance(f, DropThirdPartyInfo)]:
            root.removeFilter(f)
