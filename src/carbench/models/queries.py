"""Checks on text queries, shared by foreground queries and background queries.

A background query is a text whose CAM competes with the foreground queries (CaR, CLIP-ES) or
whose pixels become background (dense CLIP, OVSeg). One that equals a class's query takes that
class's pixels away from it (on a toy case mIoU fell from 70.7 to 44.8 with no warning), and an
empty one is a query of nothing; both are refused like the same mistakes in foreground queries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

QUERY_HINT = "the queries come from the dataset (dataset.queries) or the caller of segment()"
BACKGROUND_HINT = "background queries come from model.background_queries (or a +bg_queries=… group)"

__all__ = ["BACKGROUND_HINT", "QUERY_HINT", "check_background_queries", "check_model_background", "check_query_list"]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def check_query_list(queries: Sequence[str], what: str = "queries", hint: str = QUERY_HINT,
                     allow_empty: bool = False) -> list[str]:
    """The list as a list, or a ValueError naming what is wrong (string instead of list, empty list,
    blank or non-string entries, duplicates) and where the list comes from."""
    if isinstance(queries, str):  # a bare string would otherwise be read as one query per character
        raise ValueError(f"{what} must be a list of strings, got the string {queries!r}; wrap it: [{queries!r}]")
    queries = list(queries)
    if not queries and not allow_empty:
        label = "query" if what == "queries" else what
        raise ValueError(f"the {label} list is empty: CaR needs at least one text query ({hint})")
    bad = [q for q in queries if not isinstance(q, str) or not q.strip()]
    if bad:
        raise ValueError(f"{what} must be non-empty strings, got {bad!r}; remove or fix them ({hint})")
    dups = [q for q, n in Counter(_normal(q) for q in queries).items() if n > 1]
    if dups:
        raise ValueError(
            f"duplicate {what} {sorted(set(dups))!r}: each query must appear once (two identical queries split "
            f"one object's score between them); remove or rename the duplicates ({hint})"
        )
    return queries


def check_model_background(background: Sequence[str]) -> list[str]:
    """A model's own `model.background_queries`, checked when the model is built (a bare string would
    otherwise become its letters: 'sky' → 's', 'k', 'y')."""
    return check_query_list(background, "model.background_queries", BACKGROUND_HINT, allow_empty=True)


def check_background_queries(queries: Sequence[str], background: Sequence[str]) -> list[str]:
    """Background queries pass the foreground checks (an empty list is fine: no background words) and
    none may equal a query (compared case- and space-insensitively): its pixels cannot be both."""
    background = check_query_list(background, "background queries", BACKGROUND_HINT, allow_empty=True)
    fg = {_normal(q) for q in queries}
    clash = sorted(b for b in background if _normal(b) in fg)
    if clash:
        raise ValueError(
            f"background queries {clash} are also class queries, so they would take those classes' pixels; remove "
            "them from model.background_queries (or rename the class query in dataset.queries)"
        )
    return background
