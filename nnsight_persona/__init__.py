"""nnsight-persona: persona-prompt ("As X, do Y") interpretability experiments with nnsight.

The Python API (docs/python.md), imported on first use so `import nnsight_persona` stays fast:

- capture, decompose, substitute, markers, inject, knockout, heads: run an experiment on a model
  name or an already loaded model; each returns the Dataset its command writes;
- vectors_extract, vectors_steer, vectors_monitor, vectors_trace, vectors_vs_edit, vectors_vs_delta, vectors_calibrate,
  subnetwork_find, subnetwork_eval: the same for the `vectors ...` and `subnetwork ...` commands;
- load_model: load a model once for several runs;
- open_results: result files of one experiment, concatenated along `model`;
- write_report: the HTML page of a results folder;
- summary, findings: a file's statistics with bootstrap intervals, and the claims a folder supports
  (docs/statistics.md).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "capture": "api", "decompose": "api", "substitute": "api", "markers": "api", "inject": "api",
    "knockout": "api", "heads": "api",
    "vectors_extract": "api", "vectors_steer": "api", "vectors_monitor": "api", "vectors_trace": "api",
    "vectors_vs_edit": "api", "vectors_vs_delta": "api", "vectors_calibrate": "api", "subnetwork_find": "api",
    "subnetwork_eval": "api",
    "load_model": "models",
    "open_results": "storage.results",
    "write_report": "report",
    "summary": "api", "findings": "api",
}

__all__ = sorted(_EXPORTS)

from .moved import install as _install_moved  # noqa: E402  (old import paths; imports nothing heavy)

_install_moved(__name__)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nnsight_persona' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
