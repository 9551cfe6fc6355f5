"""knockout: does persona behaviour flow through attention back to the persona tokens?

Attention from chosen query positions to the token span of the persona text is removed in a band
of decoder blocks (through the attention kernel's mask argument, so it holds for eager and sdpa,
single passes and every generation step). Queries: ``answer`` = p_last and every generated token;
``generated`` = generated tokens only. Conditions: ``persona`` (the persona span), ``control``
(as many key positions outside the persona span, taken from the task text first), ``none``
(nothing knocked out; equals the clean run). Measured against the clean run: the summed KL over
the n_eval teacher-forced clean tokens from p_last, and, for grids with markers, whether persona
markers survive in n_tokens greedy tokens generated with the knockout held at every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ..batching import chunked, left_pad, length_ordered
from ..edits import Knockout
from ..errors import SelectionError
from ..grids import Grid
from ..prompts import Prompt, render_prompt
from ..provenance import provenance_attrs
from ..stopping import stoppable
from ..scoring import markers_found
from ..tracing import decode_answer, generate_with_edit, kl_in_sessions
from . import capture as capture_exp

CONDITIONS = ("persona", "control", "none")
QUERIES = ("answer", "generated")


def default_bands(n_layers: int) -> list[tuple[int, int]]:
    """Contiguous bands of a quarter of the depth, sliding by half a band, plus all blocks."""
    width = max(1, n_layers // 4)
    stride = max(1, width // 2)
    starts = list(range(0, n_layers - width + 1, stride))
    if starts[-1] != n_layers - width:
        starts.append(n_layers - width)
    return list(dict.fromkeys([(s, s + width) for s in starts] + [(0, n_layers)]))


def parse_bands(text: str, n_layers: int) -> list[tuple[int, int]]:
    """'START:END[,START:END...]' (decoder blocks START..END-1), or 'all'."""
    bands = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            bands.append((0, n_layers))
            continue
        try:
            start, end = (int(v) for v in part.split(":"))
        except ValueError:
            raise SelectionError(f"cannot read band {part!r}; use START:END with 0 <= START < END <= {n_layers}, or 'all'") from None
        if not 0 <= start < end <= n_layers:
            raise SelectionError(f"band {part!r} out of range; use START:END with 0 <= START < END <= {n_layers}")
        bands.append((start, end))
    return list(dict.fromkeys(bands))  # a repeated band would make the band labels ambiguous


@dataclass(frozen=True)
class KnockoutSpec:
    grid: str
    bands: tuple[tuple[int, int], ...]
    queries: str = "answer"
    conditions: tuple[str, ...] = CONDITIONS
    heads: tuple[int, ...] | None = None
    cells: tuple[str, ...] = ()
    n_eval: int = 10
    n_tokens: int = 80  # greedy tokens for the marker test; 0 skips it
    batch_size: int = 32
    batches_per_request: int = 8  # KL batches sent together in one nnsight session

    def to_dict(self) -> dict:
        return asdict(self)


def control_positions(prompt: Prompt, n: int) -> list[int]:
    """n key positions outside the persona span: the user text after the persona (the task) first,
    then earlier prompt tokens, never the first token (an attention sink) nor p_last."""
    start, end = prompt.persona_span
    after = list(range(end, prompt.p_user_text_last + 1))
    before = list(range(1, start))
    return (after + before)[:n]


def run(
    loaded, grid: Grid, spec: KnockoutSpec, capture_ds: xr.Dataset | None = None, progress: bool = True,
    previous=None, checkpoint=None,
) -> xr.Dataset:
    """Run the knockouts; on Ctrl-C returns what was done (completed=0). `previous`: an unfinished
    result of the same spec whose finished rows are kept; `checkpoint`: called after every batch."""
    _check(spec, loaded)
    cells = grid.select_cells(list(spec.cells))
    labels = [c.label for c in cells]
    conditions = [c for c in CONDITIONS if c in spec.conditions]
    prompts = [render_prompt(loaded.tokenizer, grid.user_text(c, "XY"), grid.persona_text(c, "XY")) for c in cells]
    if capture_ds is None:  # only the clean continuations are needed: no residuals
        continuation = capture_exp.clean_continuations(loaded, prompts, spec.n_eval + 2, spec.batch_size, progress)
    else:
        capture_exp.check_capture(capture_ds, loaded, [], [], cells)
        continuation = capture_ds.continuation_ids.isel(model=0).sel(cell=labels).values
    keys = {}
    for ci, p in enumerate(prompts):
        persona = list(range(*p.persona_span))
        keys[(ci, "persona")] = persona
        keys[(ci, "control")] = control_positions(p, len(persona))
        keys[(ci, "none")] = []
    suffix = [continuation[ci, : spec.n_eval - 1].tolist() for ci in range(len(cells))]
    rows = [(ci, bi, k) for ci in range(len(cells)) for bi in range(len(spec.bands)) for k in range(len(conditions))]
    kl = np.full((len(spec.bands), len(cells), len(conditions)), np.nan)
    with_markers = bool(grid.markers) and spec.n_tokens > 0
    texts = np.full((len(spec.bands), len(cells), len(conditions)), "", dtype=object)
    if previous is not None:
        kl[:] = previous.kl.isel(model=0).values
        if with_markers:
            texts[:] = previous.text.isel(model=0).values
        rows = [(ci, bi, k) for ci, bi, k in rows if np.isnan(kl[bi, ci, k])]
    partial = lambda: _dataset(loaded, grid, spec, cells, conditions, kl, texts if with_markers else None, keys, False)
    def kl_job(chunk):
        """(batch, writes, window_cols, reference_rows, knockout) for a chunk, and its clean rows."""
        cell_ids = sorted({r[0] for r in chunk})
        seqs = [list(prompts[ci].ids) + suffix[ci] for ci in cell_ids] + [list(prompts[r[0]].ids) + suffix[r[0]] for r in chunk]
        batch = left_pad(seqs, loaded.pad_id)
        knock = _knockout(batch, [None] * len(cell_ids) + chunk, prompts, keys, spec, conditions, loaded.n_layers)
        width = batch.input_ids.shape[1]
        windows = torch.arange(width - spec.n_eval, width).repeat(len(seqs), 1)
        refs = torch.tensor(list(range(len(cell_ids))) + [cell_ids.index(r[0]) for r in chunk])
        return (batch, [], windows, refs, knock), len(cell_ids)

    rows = length_ordered(rows, lambda r: len(prompts[r[0]].ids))  # a cell's rows stay together
    chunks = [[rows[k] for k in rng] for rng in chunked(len(rows), spec.batch_size)]
    with stoppable() as stop:
        for chunk, values in kl_in_sessions(loaded, chunks, kl_job, spec.batches_per_request, "knockout", progress):
            if with_markers:  # generation holds the knockout at every step: one request per batch
                gen_batch = left_pad([list(prompts[r[0]].ids) for r in chunk], loaded.pad_id)
                gen_knock = _knockout(gen_batch, chunk, prompts, keys, spec, conditions, loaded.n_layers)
                tokens = generate_with_edit(loaded, gen_batch, spec.n_tokens, knockout=gen_knock)
                for r, (ci, bi, k) in enumerate(chunk):
                    texts[bi, ci, k] = decode_answer(loaded, tokens[r].tolist())
            # The KL marks a row done, so it is written last.
            for (ci, bi, k), value in zip(chunk, values):
                kl[bi, ci, k] = value
            if checkpoint is not None:
                checkpoint(partial)
    return stop.mark(_dataset(loaded, grid, spec, cells, conditions, kl, texts if with_markers else None, keys, stop.finished))


def _knockout(batch, row_keys, prompts, keys, spec, conditions, n_layers) -> Knockout:
    """One Knockout for a batch; rows given as (cell, band, condition) or None (an untouched row)."""
    n_rows, width = batch.input_ids.shape
    key_mask = torch.zeros(n_rows, width, dtype=torch.bool)
    query_mask = torch.zeros(n_rows, width, dtype=torch.bool)
    active = torch.zeros(n_rows, n_layers, dtype=torch.bool)
    for r, row in enumerate(row_keys):
        if row is None:
            continue
        ci, bi, k = row
        pad = int(batch.pad[r])
        positions = keys[(ci, conditions[k])]
        if not positions:
            continue
        key_mask[r, [pad + i for i in positions]] = True
        first_query = prompts[ci].p_last if spec.queries == "answer" else len(prompts[ci].ids)
        query_mask[r, pad + first_query :] = True
        start, end = spec.bands[bi]
        active[r, start:end] = True
    return Knockout(keys=key_mask, queries=query_mask, active=active, generated=True, heads=spec.heads)


def _check(spec: KnockoutSpec, loaded) -> None:
    bad = [c for c in spec.conditions if c not in CONDITIONS]
    if bad or not spec.conditions:
        raise SelectionError(f"unknown knockout condition(s) {bad or list(spec.conditions)}; allowed: {list(CONDITIONS)}")
    if spec.queries not in QUERIES:
        raise SelectionError(f"unknown --queries {spec.queries!r}; allowed: {list(QUERIES)}")
    for start, end in spec.bands:
        if not 0 <= start < end <= loaded.n_layers:
            raise SelectionError(f"band {start}:{end} out of range; allowed 0 <= START < END <= {loaded.n_layers}")
    if spec.heads is not None:
        n_heads = loaded.lm._module.config.num_attention_heads
        bad = [h for h in spec.heads if not 0 <= h < n_heads]
        if bad:
            raise SelectionError(f"head(s) {bad} out of range; allowed: 0..{n_heads - 1}")


def _dataset(loaded, grid, spec, cells, conditions, kl, texts, keys, completed) -> xr.Dataset:
    dims = ("model", "band", "cell", "condition")
    n_keys = np.array([[len(keys[(ci, c)]) for c in conditions] for ci in range(len(cells))])
    data = {
        "kl": (dims, kl[None]),
        "n_keys": (("model", "cell", "condition"), n_keys[None]),
    }
    if texts is not None:
        any_marker = np.zeros(texts.shape, dtype=np.int8)
        n_distinct = np.zeros(texts.shape, dtype=np.int64)
        for bi, ci, k in np.ndindex(texts.shape):
            found = markers_found(texts[bi, ci, k], grid.markers.get(cells[ci].persona, ()))
            any_marker[bi, ci, k], n_distinct[bi, ci, k] = int(bool(found)), len(found)
        data.update(text=(dims, texts[None]), any_marker=(dims, any_marker[None]), n_distinct=(dims, n_distinct[None]))
    ds = xr.Dataset(
        data,
        coords={
            "model": [loaded.model_id],
            "band": [f"{s}:{e}" for s, e in spec.bands],
            "band_start": ("band", np.array([s for s, _ in spec.bands], dtype=np.int64)),
            "band_end": ("band", np.array([e for _, e in spec.bands], dtype=np.int64)),
            "cell": [c.label for c in cells],
            "condition": conditions,
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
        },
        attrs=provenance_attrs(loaded, "knockout", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs["completed"] = int(completed)
    ds["kl"].attrs.update(long_name=f"summed KL(clean || knocked out) over {spec.n_eval} tokens", units="nats")
    ds["n_keys"].attrs.update(long_name="key positions knocked out")
    ds["band"].attrs.update(long_name="decoder blocks START:END")
    if texts is not None:
        ds["any_marker"].attrs.update(long_name="any own-persona marker in the continuation")
    return ds
