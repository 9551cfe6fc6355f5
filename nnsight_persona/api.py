"""The Python API: one function per experiment, the same runs as the commands.

    import nnsight_persona as np_
    ds = np_.substitute("toy", grid="toy", layers="paper")

Each function takes a model name (an alias, a hub id, a directory; default: the toy model, or the
model of a given capture) or an already loaded model
(`nnsight_persona.models.load_model`), so a notebook loads a model once, and returns the Dataset
the command of the same name writes. Each study keeps its functions in studies/<name>/api.py, over
the same assembly as its commands (`vectors_extract` is `vectors extract`, `subnetwork_find` is
`subnetwork find`, ...); this module exports them, one line per study.

Without `out` nothing is written. With `out`, the file follows the commands' rules
(docs/reliability.md): a finished result of the same computation there is returned without
computing, an unfinished one is resumed, anything else is refused unless `overwrite=True`.
"""

from .analysis.api import findings, summary
from .studies.subnetworks.api import subnetwork_eval, subnetwork_find
from .studies.vectors.api import (
    vectors_calibrate, vectors_extract, vectors_monitor, vectors_steer, vectors_trace, vectors_vs_delta, vectors_vs_edit,
)
from .studies.xu2026.api import capture, decompose, heads, inject, knockout, markers, substitute

EXPERIMENTS = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads")
VECTORS_AND_SUBNETWORKS = ("vectors_extract", "vectors_steer", "vectors_monitor", "vectors_trace", "vectors_vs_edit",
                           "vectors_vs_delta", "vectors_calibrate", "subnetwork_find", "subnetwork_eval")
__all__ = [
    "capture", "decompose", "substitute", "markers", "inject", "knockout", "heads",
    "vectors_extract", "vectors_steer", "vectors_monitor", "vectors_trace", "vectors_vs_edit", "vectors_vs_delta",
    "vectors_calibrate", "subnetwork_find", "subnetwork_eval", "summary", "findings",
]
