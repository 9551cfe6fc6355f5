"""capture: residuals at the prompt-to-answer transition for every cell and condition.

For each cell the clean XY prompt is continued greedily (n_continuation tokens). The first clean
tokens are then teacher-forced after all four prompts (BB, XB, BY, XY), so g1/g2 are the same
continuation positions in each, and residuals are read at every chosen layer and position in
batched forward passes (many prompts per pass, left-padded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core.batching import chunked, left_pad, length_ordered
from ...core.errors import SelectionError
from ...core.grids import CONDITIONS, Grid
from ...core.progress import tqdm
from ...core.prompts import GENERATED_POSITIONS, POSITIONS, Prompt, render_prompt
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from ...core.tracing import (
    greedy_continuations,
    greedy_continuations_reading,
    read_residuals,
    read_residuals_on_prefix,
)


@dataclass(frozen=True)
class CaptureSpec:
    grid: str
    layers: tuple[int, ...]
    positions: tuple[str, ...] = POSITIONS
    cells: tuple[str, ...] = ()  # empty: every cell of the grid
    n_continuation: int = 12
    batch_size: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


def check_capture(capture_ds: xr.Dataset, loaded, layers, positions, cells) -> None:
    """Refuse a capture made with another model, lacking a needed site or cell, or unfinished."""
    if capture_ds.attrs.get("model_id") != loaded.model_id:
        raise SelectionError(
            f"the capture was made with model {capture_ds.attrs.get('model_id')!r}, not {loaded.model_id!r}"
        )
    revision = capture_ds.attrs.get("model_revision")
    if revision is not None and revision != loaded.revision:
        raise SelectionError(
            f"the capture was made with other weights of model {loaded.model_id!r} (fingerprint {revision}, "
            f"now {loaded.revision}): the model changed since; rerun the capture"
        )
    for dim, wanted in (("layer", layers), ("position", positions), ("cell", [c.label for c in cells])):
        have = set(capture_ds[dim].values.tolist())
        missing = [w for w in wanted if w not in have]
        if missing:
            raise SelectionError(f"the capture has no {dim} {missing}; it holds {sorted(have)}")
    if not capture_ds.attrs.get("completed", 0):
        raise SelectionError("the capture file is incomplete (completed=0); rerun the capture first")


def builtin_capture(loaded, grid: Grid, spec: CaptureSpec, progress: bool = True) -> xr.Dataset:
    """A capture an experiment makes for itself (no capture file given). Unlike run(), Ctrl-C is
    not turned into an unfinished result: nothing of it would be kept, so it propagates."""
    ds = run(loaded, grid, spec, progress=progress)
    if not ds.attrs.get("completed"):
        if "Ctrl-C" in ds.attrs.get("stopped_by", ""):
            raise KeyboardInterrupt
        from ...core.errors import RemoteFailure

        raise RemoteFailure(ds.attrs.get("stopped_by", "the built-in capture did not finish"))
    return ds


def builtin_continuations(loaded, grid: Grid, cells, n_tokens: int, batch_size: int, progress: bool = True) -> np.ndarray:
    """The clean XY continuations [len(cells), n_tokens] an experiment generates for itself when it
    reads no residuals here (the remote-native sweeps, native.py): token ids only, batched as the
    capture batches them, so the same tokens."""
    prompts = [render_prompt(loaded.tokenizer, grid.user_text(c, "XY"), grid.persona_text(c, "XY")) for c in cells]
    return clean_continuations(loaded, prompts, n_tokens, batch_size, progress)


def render_cell_prompts(loaded, grid: Grid, cells) -> dict[tuple[str, str], Prompt]:
    """Every (cell label, condition) prompt, rendered once."""
    return {
        (cell.label, cond): render_prompt(
            loaded.tokenizer, grid.user_text(cell, cond), grid.persona_text(cell, cond)
        )
        for cell in cells
        for cond in CONDITIONS
    }


def clean_continuations(loaded, prompts: list[Prompt], n_tokens: int, batch_size: int, progress: bool = True) -> np.ndarray:
    """Greedy continuations [len(prompts), n_tokens], batched."""
    out = np.zeros((len(prompts), n_tokens), dtype=np.int64)
    order = length_ordered(range(len(prompts)), lambda i: len(prompts[i].ids))
    for rng in tqdm(list(chunked(len(order), batch_size)), desc="clean continuations", disable=not progress):
        index = [order[k] for k in rng]
        batch = left_pad([prompts[i].ids for i in index], loaded.pad_id)
        out[index] = greedy_continuations(loaded, batch, n_tokens).numpy()
    return out


def continuations_with_residuals(loaded, prompts: list[Prompt], n_tokens: int, batch_size: int, layers, positions,
                                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """clean_continuations, and the residuals of these prompts at `layers` and `positions` read
    while generating ([len(layers), len(positions), len(prompts), hidden]): a generated position is
    the input of a later step, so the prompt the continuation comes from is never run again."""
    out = np.zeros((len(prompts), n_tokens), dtype=np.int64)
    resid = np.zeros((len(layers), len(positions), len(prompts), loaded.hidden_size), np.float32)
    n_generated = max([GENERATED_POSITIONS[p] + 1 for p in positions if p in GENERATED_POSITIONS], default=0)
    in_prompt = [k for k, name in enumerate(positions) if name not in GENERATED_POSITIONS]
    order = length_ordered(range(len(prompts)), lambda i: len(prompts[i].ids))
    for rng in tqdm(list(chunked(len(order), batch_size)), desc="clean continuations", disable=not progress):
        index = [order[k] for k in rng]
        batch = left_pad([prompts[i].ids for i in index], loaded.pad_id)
        rows = torch.arange(len(index)).repeat_interleave(len(in_prompt))
        cols = batch.pad[rows] + torch.tensor([[prompts[i].position(positions[k]) for k in in_prompt] for i in index],
                                              dtype=torch.long).flatten()
        tokens, at_prompt, generated = greedy_continuations_reading(loaded, batch, n_tokens, list(layers), rows, cols,
                                                                    n_generated)
        out[index] = tokens.numpy()
        at_prompt = at_prompt.reshape(len(layers), len(index), len(in_prompt), loaded.hidden_size).numpy()
        for k, name in enumerate(positions):
            if name in GENERATED_POSITIONS:
                resid[:, k, index] = generated[GENERATED_POSITIONS[name]].numpy()
            else:
                resid[:, k, index] = at_prompt[:, :, in_prompt.index(k)]
    return out, resid


def run(loaded, grid: Grid, spec: CaptureSpec, progress: bool = True, previous=None, checkpoint=None) -> xr.Dataset:
    """Run the capture; on Ctrl-C returns what was done, with attrs['completed'] = 0.

    previous: an unfinished result of the same spec; its finished rows are kept, not recomputed.
    checkpoint: called with a function building the partial dataset after every batch."""
    cells = grid.select_cells(list(spec.cells))
    prompts = render_cell_prompts(loaded, grid, cells)
    layers, positions = list(spec.layers), list(spec.positions)
    n_forced = max([GENERATED_POSITIONS[p] + 1 for p in positions if p in GENERATED_POSITIONS], default=0)
    resid = np.full((len(layers), len(positions), len(cells), len(CONDITIONS), loaded.hidden_size), np.nan, np.float32)
    continuation = np.zeros((len(cells), spec.n_continuation), dtype=np.int64)
    if previous is not None:
        resid[:] = previous.resid.isel(model=0).values
    partial = lambda: _dataset(loaded, grid, spec, cells, prompts, layers, positions, resid, continuation, False)
    with stoppable() as stop:
        xy = [prompts[(c.label, "XY")] for c in cells]
        # Greedy and deterministic: regenerating on resume gives the same tokens. The XY rows are
        # read while generating (their prompt and forced tokens are what the generation runs).
        if spec.n_continuation > n_forced:
            continuation, xy_resid = continuations_with_residuals(loaded, xy, spec.n_continuation, spec.batch_size,
                                                                  layers, positions, progress)
            resid[:, :, :, CONDITIONS.index("XY")] = xy_resid
        else:
            continuation = clean_continuations(loaded, xy, spec.n_continuation, spec.batch_size, progress)
        rows = [(i, j) for i in range(len(cells)) for j in range(len(CONDITIONS)) if np.isnan(resid[0, 0, i, j, 0])]
        rows = length_ordered(rows, lambda r: len(prompts[(cells[r[0]].label, CONDITIONS[r[1]])].ids))
        for rng in tqdm(list(chunked(len(rows), spec.batch_size)), desc="capture", disable=not progress):
            chunk = [rows[k] for k in rng]
            seqs, sites = [], []
            for i, j in chunk:
                p = prompts[(cells[i].label, CONDITIONS[j])]
                seqs.append(list(p.ids) + continuation[i, :n_forced].tolist())
                sites.append([p.position(name) for name in positions])
            batch = left_pad(seqs, loaded.pad_id)
            sel_rows = torch.arange(len(chunk)).repeat_interleave(len(positions))
            sel_cols = batch.pad[sel_rows] + torch.tensor(sites).flatten()
            if n_forced and not loaded.remote:
                # Each condition's prompt is shared by many rows (BB by every cell), only the forced
                # continuation tokens differ: run each prompt once, then only those columns.
                got = read_residuals_on_prefix(loaded, batch, sel_rows, sel_cols, layers,
                                               prefix=batch.input_ids.shape[1] - n_forced)
            else:
                got = read_residuals(loaded, batch, sel_rows, sel_cols, layers)
            got = got.reshape(len(layers), len(chunk), len(positions), -1).numpy()
            for k, (i, j) in enumerate(chunk):
                resid[:, :, i, j, :] = got[:, k]
            if checkpoint is not None:
                checkpoint(partial)
    return stop.mark(_dataset(loaded, grid, spec, cells, prompts, layers, positions, resid, continuation, stop.finished))


def _dataset(loaded, grid, spec, cells, prompts, layers, positions, resid, continuation, completed) -> xr.Dataset:
    labels = [c.label for c in cells]
    tok = loaded.tokenizer
    index = np.array(
        [[[prompts[(lbl, cond)].position(p) for cond in CONDITIONS] for lbl in labels] for p in positions]
    )
    span = np.array([[prompts[(lbl, cond)].persona_span for cond in CONDITIONS] for lbl in labels])
    text = np.array([[prompts[(lbl, cond)].text for cond in CONDITIONS] for lbl in labels], dtype=object)
    steps = np.arange(continuation.shape[1])
    token_text = np.array([[tok.decode([t]) for t in row] for row in continuation], dtype=object)
    ds = xr.Dataset(
        {
            "resid": (("model", "layer", "position", "cell", "condition", "hidden"), resid[None]),
            "token_index": (("model", "position", "cell", "condition"), index[None]),
            "persona_start": (("model", "cell", "condition"), span[None, :, :, 0]),
            "persona_end": (("model", "cell", "condition"), span[None, :, :, 1]),
            "prompt_text": (("model", "cell", "condition"), text[None]),
            "continuation_ids": (("model", "cell", "step"), continuation[None]),
            "continuation_token": (("model", "cell", "step"), token_text[None]),
            "continuation": (
                ("model", "cell"),
                np.array([[tok.decode(row) for row in continuation]], dtype=object),
            ),
        },
        coords={
            "model": [loaded.model_id],
            "layer": np.array(layers, dtype=np.int64),
            "position": list(positions),
            "cell": labels,
            "condition": list(CONDITIONS),
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
            "step": steps,
        },
        attrs=provenance_attrs(loaded, "capture", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs["completed"] = int(completed)
    ds["resid"].attrs.update(long_name="residual stream", units="activation")
    ds["token_index"].attrs.update(long_name="token index in the unpadded prompt + teacher-forced continuation")
    ds["persona_start"].attrs.update(long_name="first token of the persona text")
    ds["persona_end"].attrs.update(long_name="one past the last token of the persona text")
    ds["layer"].attrs.update(long_name="layer (hidden_states index)")
    ds["continuation"].attrs.update(long_name="clean XY greedy continuation")
    return ds
