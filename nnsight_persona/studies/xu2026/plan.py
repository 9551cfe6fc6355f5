"""`plan`: what an experiment of this study would cost, from the model's config and a tokenizer
only (no weights): requests, bytes up and down, token-layer-forwards, the largest batch's
activation memory, and the batch size `--batch-size auto` would pick for a device's memory.

The experiment is assembled as its command assembles it (assembly.PLANS: grid, positions, cells,
layers, spec) and its own `run()` is called on a thin stand-in model while core/plan.py's
Accountant stands in for every trace, so the plan makes exactly the batches, sessions and passes
the run makes. A built-in capture (an experiment run without --capture) is its own step.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

from ...core.errors import SelectionError

PLANNED = ("capture", "substitute", "markers", "inject", "knockout", "heads")
STAND_IN_TOKENIZER = "toy"  # the tokenizer of a model known by its config only (shipped with the package)


@dataclass
class DryModel:
    """A model known by its config and tokenizer only, in the shape of models.loading.LoadedModel
    (what experiments read from it). Thin: `hidden_size` 1, so replacement vectors cost nothing
    to compute (the Accountant counts hidden-size tensors at the config's width)."""

    tokenizer: object
    config: object
    model_id: str
    family: str
    dtype: str
    n_layers: int
    remote: bool | str = False
    hidden_size: int = 1
    revision: str = "plan: config only"
    adapter: object = None
    lm: object = field(init=False)

    def __post_init__(self):
        self.lm = SimpleNamespace(_module=SimpleNamespace(config=self.config, generation_config=None))

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def layers(self):
        return None  # only traces read the blocks, and the Accountant stands in for them

    @property
    def eos_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value) -> int:
    """'80GB' (10^9), '80GiB' (2^30), '24e9' or a number of bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    found = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not found or found.group(2).lower() not in _UNITS:
        raise SelectionError(f"cannot read the device memory {value!r}; give e.g. 80GB, 80GiB or a number of bytes")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


def _tokenizer(name, folder):
    """(tokenizer, what it is): `name` (an alias, folder or hub id), else the model folder's own,
    else the stand-in."""
    from transformers import AutoTokenizer

    from ...models.loading import resolve_model_path

    chosen = name or folder or STAND_IN_TOKENIZER
    path = resolve_model_path(chosen) if chosen != folder else folder
    note = "the model's own" if chosen == folder else f"{chosen} (a stand-in for prompt lengths)"
    return AutoTokenizer.from_pretrained(path), note


def dry_model(model: str, tokenizer: str | None = None, remote: bool | str = False, dtype: str | None = None):
    """(DryModel, notes) for a model name, folder or config JSON (models/configs.py)."""
    from ...models.configs import model_config
    from ...models.loading import DEFAULT_DTYPE, DTYPES

    source = model_config(model)
    config = source.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    family = getattr(config, "model_type", "?")
    if dtype is None:
        configured = str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or "").replace("torch.", "")
        dtype = DEFAULT_DTYPE.get(family) if source.folder else configured if configured in DTYPES else None
        dtype = dtype or DEFAULT_DTYPE.get(family, "float32")
    tok, tok_note = _tokenizer(tokenizer, source.folder)
    dry = DryModel(tokenizer=tok, config=config, model_id=source.model_id, family=family, dtype=dtype,
                   n_layers=int(text.num_hidden_layers), remote=remote)
    return dry, {"config": source.source, "tokenizer": tok_note, "hidden_size": int(text.hidden_size)}


@contextmanager
def _steps(accountant, costs: dict):
    """Count a built-in capture (costs['capture (built in)']) and the built-in continuation of a
    remote-native sweep (costs['continuation (built in)']) as steps of their own."""
    from . import capture as capture_exp
    from ...core.plan import Cost

    originals = {name: getattr(capture_exp, name) for name in STEPS}

    def counted(name):
        def run(*args, **kwargs):
            outer = accountant.cost
            accountant.cost = costs.setdefault(STEPS[name], Cost())
            try:
                return originals[name](*args, **kwargs)
            finally:
                accountant.cost = outer

        return run

    for name in STEPS:
        setattr(capture_exp, name, counted(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(capture_exp, name, original)


STEPS = {"builtin_capture": "capture (built in)", "builtin_continuations": "continuation (built in)"}


def dry_run(dry: DryModel, hidden_size: int, module, grid, spec, step: str, **kwargs) -> tuple[dict, object]:
    """Run `module.run` on `dry` with every trace counted: ({step name: Cost}, the dataset)."""
    from . import capture, heads, inject, knockout, markers, substitute
    from ...core.memory import row_bytes
    from ...core.plan import Accountant, dry_traces

    accountant = Accountant(dry.n_layers, hidden_size, dry.remote, lambda width: row_bytes(dry.config, dry.dtype, width))
    costs: dict = {}
    with dry_traces(accountant, [capture, substitute, inject, knockout, markers, heads]), _steps(accountant, costs):
        ds = module.run(dry, grid, spec, progress=False, **kwargs)
    costs[step] = accountant.cost
    return costs, ds


def batch_sizes(dry: DryModel, grid, cells, device_memory: int | None) -> dict:
    """What --batch-size auto picks: on a device with `device_memory` bytes free (as on a GPU: the
    CPU's cap of 32 rows does not apply), and on a server."""
    from ...core.memory import auto_batch_size as sized
    from .assembly import REMOTE_BATCH_SIZE, auto_sequence_length

    length = auto_sequence_length(dry.tokenizer, grid, list(cells) or grid.cell_labels)
    out = {"sequence_length": length, "remote": REMOTE_BATCH_SIZE}
    if device_memory is not None:
        out["device_memory_bytes"] = device_memory
        out["local"] = sized(dry.config, dry.dtype, length, device_memory)
    return out


DEFAULT_POSITIONS = {"markers": "p_last"}  # as the commands' defaults; every other experiment: all


def plan(experiment: str, model: str, *, tokenizer: str | None = None, grid: str = "toy", layers: str = "default",
         positions: str | None = None, cells: str | None = None, batch_size="auto", remote: bool = False,
         ndif_host: str | None = None, dtype: str | None = None, device_memory=None, **options) -> dict:
    """The cost of `nnsight-persona EXPERIMENT ...` with these options (see the module docstring):
    a dict with the run's settings, one entry per step (a built-in capture, the experiment) and
    their total."""
    import dataclasses

    from .assembly import PLANS, REMOTE_BATCH_SIZE, RunOptions

    if experiment not in PLANNED:
        raise SelectionError(f"cannot plan {experiment!r}; plannable: {list(PLANNED)}")
    positions = positions or DEFAULT_POSITIONS.get(experiment, "all")
    opts = RunOptions(model_spec=None, grid_name=grid, layers=layers, positions=positions, dtype=None, cells=cells,
                      batch_size=batch_size, progress=False, remote=remote, ndif_host=ndif_host)
    target = opts.remote_target
    dry, notes = dry_model(model, tokenizer, target, dtype)
    opts.model_spec = dry
    module, s, spec, kwargs = PLANS[experiment](opts, **options)
    memory = parse_memory(device_memory) if device_memory is not None else None
    sizes = batch_sizes(dry, s.grid, s.cells, memory)
    if spec.batch_size == "auto":
        rows = REMOTE_BATCH_SIZE if target else sizes.get("local")
        if rows is None:
            raise SelectionError("--batch-size auto needs --device-memory for a local plan (or give --batch-size N)")
        spec = dataclasses.replace(spec, batch_size=rows)
    costs, _ = dry_run(dry, notes["hidden_size"], module, s.grid, spec, experiment, **kwargs)
    return report(experiment, dry, notes, s.grid_name, spec, sizes, costs)


def report(experiment, dry, notes, grid_name, spec, sizes, costs: dict) -> dict:
    from ...core.plan import Cost

    steps = [{"step": name, **cost.as_dict()} for name, cost in costs.items()]
    total = Cost()
    for cost in costs.values():
        for key in ("requests", "bytes_up", "bytes_down", "token_layer_forwards", "passes"):
            setattr(total, key, getattr(total, key) + getattr(cost, key))
        if cost.peak_activation_bytes > total.peak_activation_bytes:
            total.peak_activation_bytes, total.peak_rows, total.peak_width = (
                cost.peak_activation_bytes, cost.peak_rows, cost.peak_width)
    settings = {k: v for k, v in spec.to_dict().items() if k != "grid_definition"}
    return {
        "experiment": experiment, "model": dry.model_id, "config": notes["config"], "tokenizer": notes["tokenizer"],
        "n_layers": dry.n_layers, "hidden_size": notes["hidden_size"], "dtype": dry.dtype,
        "backend": {False: "local", "local": "local simulation of the remote path"}.get(dry.remote, "NDIF"),
        "grid": grid_name, "spec": settings, "batch_size_auto": sizes, "steps": steps, "total": total.as_dict(),
    }


def plan_reproduce(model: str, grid: str, *, tokenizer: str | None = None, batch_size="auto", remote: bool = True,
                   dtype: str | None = None, device_memory=None) -> dict:
    """The capture and substitute steps of `reproduce` on one grid (the specs commands/pipeline.py
    builds: the capture at every layer and position, the substitution at the paper's layers from
    that capture)."""
    import dataclasses

    from . import capture as capture_exp
    from . import substitute as substitute_exp
    from .assembly import REMOTE_BATCH_SIZE
    from ...core.grids import load_grid
    from ...core.selection import paper_layers

    dry, notes = dry_model(model, tokenizer, remote, dtype)
    the_grid = load_grid(grid)
    memory = parse_memory(device_memory) if device_memory is not None else None
    sizes = batch_sizes(dry, the_grid, (), memory)
    rows = batch_size if batch_size != "auto" else REMOTE_BATCH_SIZE if remote else sizes.get("local", 32)
    n = dry.n_layers
    cap_spec = capture_exp.CaptureSpec(grid=grid, layers=tuple(range(n + 1)), batch_size=rows)
    costs, cap = dry_run(dry, notes["hidden_size"], capture_exp, the_grid, cap_spec, "capture")
    sub_spec = substitute_exp.SubstituteSpec(grid=grid, layers=tuple(paper_layers(n)), batch_size=rows)
    sub_costs, _ = dry_run(dry, notes["hidden_size"], substitute_exp, the_grid, sub_spec, "substitute", capture_ds=cap)
    costs.update(sub_costs)
    out = report("reproduce", dry, notes, grid, dataclasses.replace(sub_spec), sizes, costs)
    out["spec"] = {"capture": {k: v for k, v in cap_spec.to_dict().items()},
                   "substitute": {k: v for k, v in sub_spec.to_dict().items()}}
    return out
