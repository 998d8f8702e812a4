"""The kept query set of every recurrent step of a prediction, as label ids (the filter diagnostics' input).

`carbench.metrics.query_set.QuerySetDiagnostics` compares sets of class ids; a prediction carries
query indices, per step in its trace. Here they are turned into the dataset's label ids:

* a trace step with ``kept`` gives that step's set; steps of a two-pass model (``pass`` key) hold
  indices into that pass's own query list, which the step's ``query_ids`` maps back to the
  dataset's queries. Passes run side by side, so step s of the image is the union of each pass's
  set after its step s (a pass that stopped earlier counts with its final set);
* a prediction whose trace has no ``kept`` (precomputed label maps) has one step: its final set.

The output set is `Prediction.kept` (what the model painted from), which differs from the last
step's kept set when `model.max_steps` cut the recurrence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from carbench.types import Prediction


def _pass_steps(trace: Sequence[dict[str, Any]]) -> list[list[list[int]]]:
    """Per pass (in order of first appearance), the kept query indices (dataset order) of each step."""
    passes: dict[Any, list[list[int]]] = {}
    for step in trace:
        if "kept" not in step:
            continue
        kept = [int(k) for k in step["kept"]]
        if "pass" in step:
            ids = step.get("query_ids")
            if ids is None:
                raise ValueError(
                    f"trace step of pass {step['pass']!r} has no 'query_ids': its kept indices cannot be mapped "
                    "to the dataset's queries; a multi-pass model must record each pass's query indices"
                )
            kept = [int(ids[k]) for k in kept]
        passes.setdefault(step.get("pass"), []).append(kept)
    return list(passes.values())


def kept_label_steps(pred: Prediction, query_label_ids: Sequence[int]) -> list[list[int]]:
    """Sorted label ids kept after each step (see the module docstring); at least one step."""
    passes = _pass_steps(pred.trace)
    if not passes:
        return [final_labels(pred, query_label_ids)]
    n_steps = max(len(p) for p in passes)
    out = []
    for s in range(n_steps):
        queries = set().union(*(p[min(s, len(p) - 1)] for p in passes))
        out.append(sorted({int(query_label_ids[q]) for q in queries}))
    return out


def final_labels(pred: Prediction, query_label_ids: Sequence[int]) -> list[int]:
    """Sorted label ids of the queries the model kept in the end."""
    return sorted({int(query_label_ids[k]) for k in pred.kept})


def present_labels(target: np.ndarray, query_label_ids: Sequence[int]) -> list[int]:
    """Sorted label ids that some query stands for and that occur in the GT (background / ignore excluded,
    since no query stands for them)."""
    queried = {int(v) for v in query_label_ids}
    return sorted(queried & {int(v) for v in np.unique(target)})
