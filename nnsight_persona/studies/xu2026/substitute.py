"""substitute: replace the clean XY residual at (layer, position) and measure the damage.

For each cell, layer, position and condition, the clean XY residual is replaced by the condition's
vector (built from the capture's four conditions) and KL(clean || patched) of the next-token
distributions is summed over n_eval teacher-forced clean tokens, the paper's convention: the
distributions from the window start on (`Prompt.window_start`: the probe itself for p_last, g1,
g2; p_last for probes inside the prompt, so p_user_last is scored on the same clean continuation
tokens as p_last, never on predictions of template tokens).

Batched: every patch of a cell runs on the same teacher-forced sequence, so many (layer, position,
condition) patches share one forward pass. Locally, each chunk of cells runs once clean and every
patch then runs only its suffix from its own layer up, compared with the clean log-probabilities
(`_sweep_with_prefix_cache`; `_sweep_whole` without the prefix cache). Remote runs send whole
sequences with one unedited row per cell per batch, and the server computes the capture residuals
and every condition's vector itself, in the session of the batches that write them
(`_sweep_native`, native.py): neither residuals nor vectors cross the network. Only per-row KL
sums leave the trace.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core.batching import chunked, left_pad, length_ordered
from ...core.edits import Write, group_by_layer
from ...core.errors import SelectionError
from ...core.grids import Grid
from ...core.progress import tqdm
from ...core.prompts import POSITIONS, render_prompt
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from ...core.tracing import clean_pass, kl_in_sessions, select_rows, suffix_batch, window_kl_against
from ...core.recipes import recipes_by_layer
from ...core.replacements import direction_key, random_direction, site_residuals, stacked, vector
from . import capture as capture_exp
from .native import CaptureRows, forced_tokens, sessions

CONDITIONS = ("additive", "oracle", "baseline", "persona_only", "task_only", "random")


@dataclass(frozen=True)
class SubstituteSpec:
    grid: str
    layers: tuple[int, ...]
    positions: tuple[str, ...] = POSITIONS
    conditions: tuple[str, ...] = CONDITIONS
    cells: tuple[str, ...] = ()
    n_eval: int = 10
    n_continuation: int = 12
    batch_size: int = 32
    seed: int = 0
    prefix_cache: bool = True  # reuse each prefix's KV cache (local runs)
    skip_layers: bool = True  # with the prefix cache: run only the blocks at and above each patch's layer
    batches_per_request: int = 8  # whole-sequence batches sent together in one session (remote runs)

    def to_dict(self) -> dict:
        return asdict(self)


def check_conditions(conditions) -> tuple[str, ...]:
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad or not conditions:
        raise SelectionError(f"unknown substitution condition(s) {bad or list(conditions)}; allowed: {list(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in conditions)


def condition_vectors(resid: xr.DataArray, conditions, seed: int) -> xr.DataArray:
    """Replacement vectors (layer, position, cell, condition, hidden) from a capture's `resid`
    (one model). The random direction is drawn per site (`vectors.random_direction`)."""
    h = stacked(resid.transpose("layer", "position", "cell", "condition", "hidden"))
    coords = {d: resid[d].values for d in ("layer", "position", "cell")}
    direction = np.stack([np.stack([np.stack([random_direction(seed, L, p, c, h.shape[-1]) for c in coords["cell"]])
                                    for p in coords["position"]]) for L in coords["layer"]])
    values = np.stack([vector(h, c, direction) for c in conditions], axis=-2)
    return xr.DataArray(values, dims=("layer", "position", "cell", "condition", "hidden"),
                        coords={**coords, "condition": list(conditions)})


def run(
    loaded, grid: Grid, spec: SubstituteSpec, capture_ds: xr.Dataset | None = None, progress: bool = True,
    previous=None, checkpoint=None,
) -> xr.Dataset:
    """Run the sweep; on Ctrl-C returns what was done (completed=0). `previous`: an unfinished
    result of the same spec whose finished patches are kept; `checkpoint`: called after every batch
    with a function building the partial dataset."""
    conditions = check_conditions(spec.conditions)
    cells = grid.select_cells(list(spec.cells))
    labels = [c.label for c in cells]
    native = bool(loaded.remote)  # the server computes the residuals and vectors (remote runs)
    if capture_ds is None and native:
        # Only the clean continuation's token ids come here; the server reads the residuals itself.
        continuation = capture_exp.builtin_continuations(loaded, grid, cells, spec.n_continuation, spec.batch_size,
                                                         progress)
    else:
        if capture_ds is None:
            cap_spec = capture_exp.CaptureSpec(
                grid=spec.grid, layers=spec.layers, positions=spec.positions,
                cells=tuple(labels), n_continuation=spec.n_continuation, batch_size=spec.batch_size,
            )
            capture_ds = capture_exp.builtin_capture(loaded, grid, cap_spec, progress=progress)
        capture_exp.check_capture(capture_ds, loaded, spec.layers, spec.positions, cells)
        continuation = capture_ds.continuation_ids.isel(model=0).sel(cell=labels).values
    # A remote run takes only the continuation from a capture file: its residuals stay here.
    h = None if native else site_residuals(capture_ds, spec.layers, spec.positions, labels)

    layers, positions = list(spec.layers), list(spec.positions)
    kl = np.full((len(layers), len(positions), len(cells), len(conditions)), np.nan)
    if previous is not None:
        kl[:] = previous.kl.isel(model=0).values
    # Every patch of a cell shares the cell's teacher-forced XY sequence.
    prompts = [render_prompt(loaded.tokenizer, grid.user_text(c, "XY"), grid.persona_text(c, "XY")) for c in cells]
    probe = {(ci, pi): prompts[ci].position(p) for ci in range(len(cells)) for pi, p in enumerate(positions)}
    start = {(ci, pi): prompts[ci].window_start(p) for ci in range(len(cells)) for pi, p in enumerate(positions)}
    seqs = []
    for ci, p in enumerate(prompts):
        needed = max(start[(ci, pi)] for pi in range(len(positions))) + spec.n_eval - len(p.ids)
        if needed > continuation.shape[1]:
            raise SelectionError(
                f"the capture holds {continuation.shape[1]} continuation tokens; {needed} are needed to "
                f"evaluate {spec.n_eval} tokens after every chosen position (capture with --n-continuation {needed})"
            )
        seqs.append(list(p.ids) + continuation[ci, :max(needed, 0)].tolist())
    partial = lambda: _dataset(loaded, grid, spec, cells, conditions, kl, False)
    ctx = _Sweep(loaded, spec, layers, positions, labels, conditions, h, probe, start, seqs, kl,
                 checkpoint=(lambda: checkpoint(partial)) if checkpoint is not None else (lambda: None))
    with stoppable() as stop:
        # Every patch at position p changes nothing before p: locally, each cell's prefix is run once
        # and its KV cache reused by every patch. Remotely the cache would have to travel, so whole
        # sequences are run instead, their vectors built on the server (the same numbers; tests check both).
        if native:
            rows = CaptureRows(capture_exp.render_cell_prompts(loaded, grid, cells), labels, continuation,
                               forced_tokens(positions))
            _sweep_native(ctx, len(cells), progress, rows)
        else:
            (_sweep_with_prefix_cache if spec.prefix_cache else _sweep_whole)(ctx, len(cells), progress)
    return stop.mark(_dataset(loaded, grid, spec, cells, conditions, kl, stop.finished))


@dataclass
class _Sweep:
    """What both sweep strategies share: the model, the patches to make and where results go."""

    loaded: object
    spec: SubstituteSpec
    layers: list
    positions: list
    cells: list  # labels
    conditions: tuple
    h: np.ndarray | None  # the capture's residuals [layer, position, cell, 4 (BB, XB, BY, XY), hidden]; None remotely
    probe: dict  # (cell, position index) -> token index of the probe
    start: dict  # (cell, position index) -> token index of the first scored distribution
    seqs: list  # per cell: the teacher-forced XY sequence
    kl: np.ndarray  # [layer, position, cell, condition], filled in place
    checkpoint: object  # called after every batch

    def patches(self, cells, positions=None):
        """The patches still to make (a resumed run skips those with a result)."""
        return [(ci, li, pi, ki) for ci in cells for li in range(len(self.layers))
                for pi in (positions if positions is not None else range(len(self.positions)))
                for ki in range(len(self.conditions)) if np.isnan(self.kl[li, pi, ci, ki])]

    def cells_by_length(self, n_cells: int) -> list[int]:
        """Cell indices, shortest sequence first: cells batched together need little padding."""
        return length_ordered(range(n_cells), lambda ci: len(self.seqs[ci]))

    def write(self, row, patch, col) -> Write:
        """The write of one patch; its vector is computed here, not stored for every patch."""
        ci, li, pi, ki = patch
        name = self.conditions[ki]
        direction = (random_direction(self.spec.seed, self.layers[li], self.positions[pi], self.cells[ci], self.h.shape[-1])
                     if name == "random" else None)
        value = vector(self.h[li, pi, ci], name, direction)
        return Write(row=row, layer=self.layers[li], col=col, value=torch.from_numpy(value))

    def recipe_write(self, rows: CaptureRows, number: dict, row, patch, col) -> tuple:
        """The write of one patch as the server builds it (core/recipes.py): its vector's sources
        among the session's capture sites and its kind; the random direction as its seed."""
        ci, li, pi, ki = patch
        name, layer, position = self.conditions[ki], self.layers[li], self.positions[pi]
        key = direction_key(self.spec.seed, layer, position, self.cells[ci]) if name == "random" else None
        return (row, layer, col, rows.sources(number, layer, ci, position), name, key, None)


def _sweep_whole(ctx: _Sweep, n_cells: int, progress: bool) -> None:
    """Each batch row is a whole teacher-forced sequence; one unedited row per cell per batch.
    `batches_per_request` batches travel together in one nnsight session (one remote round trip)."""
    patches = ctx.patches(ctx.cells_by_length(n_cells))
    chunks = [[patches[k] for k in rng] for rng in chunked(len(patches), ctx.spec.batch_size)]
    make_job = lambda chunk: _whole_job(ctx, chunk, ctx.write, group_by_layer)
    for chunk, values in kl_in_sessions(ctx.loaded, chunks, make_job, ctx.spec.batches_per_request, "substitute", progress):
        for (ci, li, pi, ki), value in zip(chunk, values):
            ctx.kl[li, pi, ci, ki] = value
        ctx.checkpoint()


def _sweep_native(ctx: _Sweep, n_cells: int, progress: bool, rows: CaptureRows) -> None:
    """_sweep_whole's batches, in sessions that also run the capture passes of their cells on the
    server and build each patch's vector there (native.py): only the KL sums come back."""
    patches = ctx.patches(ctx.cells_by_length(n_cells))
    chunks = [[patches[k] for k in rng] for rng in chunked(len(patches), ctx.spec.batch_size)]

    def plan(group, table):
        for chunk in group:
            for ci, li, pi, _ in chunk:
                rows.need(table, ctx.layers[li], ci, ctx.positions[pi])

        def build(number):
            write = lambda row, patch, col: ctx.recipe_write(rows, number, row, patch, col)
            return [_whole_job(ctx, chunk, write, recipes_by_layer, knockout=False) for chunk in group], []

        return build

    for group, values, _ in sessions(ctx.loaded, chunks, ctx.spec.batches_per_request, ctx.spec.batch_size, plan,
                                     "substitute", progress):
        for chunk, chunk_values in zip(group, values):
            for (ci, li, pi, ki), value in zip(chunk, chunk_values):
                ctx.kl[li, pi, ci, ki] = value
            ctx.checkpoint()


def _whole_job(ctx: _Sweep, chunk, write, grouped, knockout: bool = True) -> tuple:
    """(batch, writes, window_cols, reference_rows[, knockout]) for a chunk of patches, and its
    number of clean rows. `write(row, patch, col)` makes a patch's write, `grouped` groups them
    per layer (Writes into LayerWrites, or recipe writes into LayerRecipes)."""
    n_eval = ctx.spec.n_eval
    cell_ids = sorted({p[0] for p in chunk})
    clean_row = {ci: r for r, ci in enumerate(cell_ids)}
    batch = left_pad([ctx.seqs[ci] for ci in cell_ids] + [ctx.seqs[p[0]] for p in chunk], ctx.loaded.pad_id)
    writes, windows = [], [batch.pad[r] + ctx.start[(ci, 0)] + torch.arange(n_eval) for r, ci in enumerate(cell_ids)]
    for r, patch in enumerate(chunk, start=len(cell_ids)):
        pad = int(batch.pad[r])
        writes.append(write(r, patch, pad + ctx.probe[(patch[0], patch[2])]))
        windows.append(pad + ctx.start[(patch[0], patch[2])] + torch.arange(n_eval))
    refs = torch.tensor(list(range(len(cell_ids))) + [clean_row[p[0]] for p in chunk])
    job = (batch, grouped(writes), torch.stack(windows), refs) + ((None,) if knockout else ())
    return job, len(cell_ids)


def _sweep_with_prefix_cache(ctx: _Sweep, n_cells: int, progress: bool) -> None:
    """Run each chunk of cells once, clean; then, for every patch, only what the patch can change.

    A patch at (layer L, probe column p) changes nothing before column p, at any layer, and nothing
    below layer L, at any column. So one clean pass per chunk of cells yields the KV cache of every
    prefix and the clean residuals of every later column; each patched row then feeds only the
    columns from its probe on (the prefix comes from the cache) and, with `skip_layers`, runs only
    blocks L and up: the blocks below are skipped and block L reads the clean residual with the
    patch written in. Rows of one batch share the probe column, the window offset and the layer.

    Cells are left-padded together, so every sequence ends in the same column and a probe at the
    same distance from the end (the same position name, in practice) sits in the same column for
    all cells; the probe is the suffix's first column."""
    n_eval, loaded = ctx.spec.n_eval, ctx.loaded
    sweep_layers = sorted(set(ctx.layers))
    work = []
    order = ctx.cells_by_length(n_cells)
    for rng in chunked(n_cells, ctx.spec.batch_size):
        cell_chunk = [order[k] for k in rng]
        batch = left_pad([ctx.seqs[ci] for ci in cell_chunk], loaded.pad_id)
        # (prefix length in columns, window offset from the probe) -> (cell, position index)
        groups: dict[tuple[int, int], list] = {}
        for local, ci in enumerate(cell_chunk):
            for pi in range(len(ctx.positions)):
                key = (int(batch.pad[local]) + ctx.probe[(ci, pi)], ctx.start[(ci, pi)] - ctx.probe[(ci, pi)])
                groups.setdefault(key, []).append((ci, pi))
        prefixes = sorted({prefix for prefix, _ in groups})
        for (prefix, offset), members in sorted(groups.items()):
            patches = [p for ci, pi in members for p in ctx.patches([ci], [pi])]
            by_layer = {li: [p for p in patches if p[1] == li] for li in range(len(ctx.layers))} if ctx.spec.skip_layers else {None: patches}
            for li, same in by_layer.items():
                if same:
                    work.append((batch, list(cell_chunk), prefixes, prefix, offset, li, same))
    total = sum(-(-len(p) // _suffix_rows(ctx.spec.batch_size, b, prefix)) for b, _, _, prefix, _, _, p in work)
    bar = tqdm(total=total, desc="substitute", disable=not progress)
    cached_batch = None
    for batch, cell_chunk, prefixes, prefix, offset, li, patches in work:
        if cached_batch is not batch:  # one clean pass per chunk of cells
            caches, clean, clean_logp = clean_pass(loaded, batch, sweep_layers, prefixes)
            cached_batch = batch
        # The window starts `offset` columns after the probe (p_last for a probe inside the prompt).
        window = prefix - prefixes[0] + offset + torch.arange(n_eval)
        for rng in chunked(len(patches), _suffix_rows(ctx.spec.batch_size, batch, prefix)):
            chunk = [patches[k] for k in rng]
            rows = [cell_chunk.index(p[0]) for p in chunk]
            suffix = suffix_batch(batch, rows, prefix)
            writes = [ctx.write(r, patch, 0) for r, patch in enumerate(chunk)]
            windows = (offset + torch.arange(n_eval)).repeat(len(rows), 1)
            reference = clean_logp[rows][:, window]
            past = select_rows(caches[prefix], rows)
            layer = ctx.layers[li] if li is not None else 0
            if layer >= 1:
                residual = clean[sweep_layers.index(layer), rows, prefix - prefixes[0]:].clone()
                for w in writes:
                    residual[w.row, 0] = w.value.to(residual.dtype)
                got = window_kl_against(loaded, suffix, windows, reference, past, layer=layer, residual=residual)
            else:  # the embeddings (layer 0), or every block run (skip_layers off)
                got = window_kl_against(loaded, suffix, windows, reference, past, writes=group_by_layer(writes))
            for (ci, li_, pi, ki), value in zip(chunk, got.tolist()):
                ctx.kl[li_, pi, ci, ki] = value
            ctx.checkpoint()
            bar.update()
    bar.close()


def _suffix_rows(batch_size: int, batch, prefix: int) -> int:
    """Rows per patched pass: as many token positions as `batch_size` whole sequences hold (a
    suffix is a fraction of a sequence; on a CPU, small passes are bound by per-operation
    overhead, not arithmetic), so a pass's memory stays what the batch size allows."""
    width = batch.input_ids.shape[1]
    return batch_size * max(1, width // max(1, width - prefix))


def _dataset(loaded, grid, spec, cells, conditions, kl, completed) -> xr.Dataset:
    ds = xr.Dataset(
        {"kl": (("model", "layer", "position", "cell", "condition"), kl[None])},
        coords={
            "model": [loaded.model_id],
            "layer": np.array(spec.layers, dtype=np.int64),
            "position": list(spec.positions),
            "cell": [c.label for c in cells],
            "condition": list(conditions),
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
        },
        attrs=provenance_attrs(loaded, "substitute", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs["completed"] = int(completed)
    ds["kl"].attrs.update(long_name=f"summed KL(clean || patched) over {spec.n_eval} tokens", units="nats")
    ds["layer"].attrs.update(long_name="layer (hidden_states index)")
    return ds
