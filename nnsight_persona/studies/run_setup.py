"""What every study's assembly shares: one-line notes on stderr, a model plan from a name or an
already loaded model, the claim on an output file (reuse, resume, refuse), default output paths, and
number lists from options. Each study's assembly.py builds its runs on these."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from ..core.errors import SelectionError


def note(message: str) -> None:
    """A one-line message for the person running this, on stderr (never on stdout)."""
    print(message, file=sys.stderr, flush=True)


class LoadedPlan:
    """An already loaded model in the shape of a preflight.ModelPlan (what a run reads from it)."""

    def __init__(self, loaded):
        self._loaded = loaded
        self.model_id, self.dtype, self.n_layers = loaded.model_id, loaded.dtype, loaded.n_layers
        self.revision, self.remote, self.family = loaded.revision, loaded.remote, loaded.family

    is_loaded = True

    def load(self):
        return self._loaded

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loaded, name)


def model_plan(model, dtype: str | None = None, remote: bool | str = False, device: str | None = "auto"):
    """A ModelPlan for a model name; an already loaded model (or a plan) as it is, checked against
    an explicit dtype."""
    from ..models.preflight import ModelPlan

    if isinstance(model, (str, Path)):
        return ModelPlan(str(model), dtype=dtype, remote=remote, device=device)
    plan = model if isinstance(model, ModelPlan) else LoadedPlan(model) if hasattr(model, "lm") else None
    if plan is None:
        raise SelectionError(f"model must be a name (toy, smollm2, a hub id, a directory) or a loaded model "
                             f"(nnsight_persona.models.load_model), not a {type(model).__name__}")
    if dtype is not None and plan.dtype != dtype:
        raise SelectionError(f"dtype {dtype!r} disagrees with the given model, loaded in {plan.dtype}; "
                             "leave dtype out or load the model in that dtype")
    return plan


def model_name(model) -> str:
    return str(model) if isinstance(model, (str, Path)) else model.model_id


def claim_output(path: Path, experiment: str, spec: dict, model_id: str, dtype: str | None, revision,
                 stack: ExitStack, overwrite: bool = False, fresh: bool = False):
    """Check `path` can be written, lock it for the life of `stack`, and decide from what it holds
    whether this run computes, resumes, reuses or is refused (outputs.py). Everything here
    happens before any model work."""
    from ..storage.outputs import check_writable, output_lock, plan_output

    path = check_writable(path)
    stack.enter_context(output_lock(path))
    target = plan_output(path, experiment, spec, model_id, dtype, revision, overwrite=overwrite, fresh=fresh)
    if target.done:
        made = target.existing.attrs.get("created", "?")
        note(f"already done: {path} holds the finished result of this computation (made {made}); "
             "--overwrite recomputes it")
    elif target.state == "resume":
        note(f"resuming the unfinished run in {path} (--fresh starts over)")
    elif target.protect:
        note(f"--overwrite: {path} keeps its finished result until this run completes")
    return target


def default_out(model_spec: str, experiment: str, grid_name: str) -> Path:
    """runs/<model>/<experiment>-<grid>.nc, with anything unsafe in a file name replaced."""
    import re

    safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s).stem if s.endswith((".yaml", ".yml", ".json")) else s)
    return Path("runs") / safe(model_spec) / f"{experiment}-{safe(grid_name)}.nc"


def numbers(value, flag: str) -> list[float]:
    """A comma list ('0,2,4') or a sequence of numbers as floats; a one-line error naming `flag`."""
    try:
        if isinstance(value, str):
            return [float(x) for x in value.split(",") if x.strip()]
        return [float(x) for x in ([value] if isinstance(value, (int, float)) else value)]
    except (TypeError, ValueError):
        raise SelectionError(f"{flag} {value!r} is not a comma list of numbers") from None


def joined(value) -> str | None:
    """'2,4,6' from [2, 4, 6] (or 4 from 4); a string as it is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return ",".join(str(v) for v in value)



def finished(ds, target):
    """Write the result where there is an output, as the commands do; return the dataset."""
    from ..storage.store import save_dataset

    if target is not None and not target.done:
        if ds.attrs.get("completed") or not target.protect:
            save_dataset(ds, target.path)
    if not ds.attrs.get("completed"):
        kept = f"; kept in {target.path}" if target is not None and not target.protect else ""
        note(f"stopped ({ds.attrs.get('stopped_by', 'interrupted')}): the result is partial (attrs completed=0){kept}")
    return ds
