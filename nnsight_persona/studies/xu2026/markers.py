"""markers: the paper's behavioural test. Do persona markers survive residual edits?

For each cell, 80 greedy tokens under four conditions:
- ``clean``: the XY prompt, untouched;
- ``additive``: the XY prompt with the residual at (layer, position) replaced by h_BB + Delta_X + Delta_Y;
- ``remove_persona``: the XY prompt with that residual replaced by h_XY - Delta_X;
- ``bare``: the task alone as the user turn, no persona text.
Patching ``prefill`` edits only the step that computes the probe position (the paper's choice: its
hook never touched later steps); ``all`` also adds the edit's difference (replacement minus the
clean residual) at every later generated position. Scoring follows ``scoring`` (the markers)
and, with ``evidence`` (the default), ``core.evidence``: every answer, whatever its condition, is
scored XY prompt against BY prompt of its cell on the unedited model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core.batching import chunked, left_pad, length_ordered
from ...analysis.calibration import calibrate
from ...core import evidence as evidence_scorer
from ...core.edits import GenerationEdit
from ...core.errors import SelectionError
from ...core.grids import Grid
from ...core.progress import tqdm
from ...core.prompts import GENERATED_POSITIONS, POSITIONS, render_prompt
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from ...core.scoring import marker_counts
from ...core.tracing import decode_answer, generate_with_edit
from ...core.replacements import site_residuals, vector
from . import capture as capture_exp

CONDITIONS = ("clean", "additive", "remove_persona", "bare")
EDITED = ("additive", "remove_persona")
PATCH_STEPS = ("prefill", "all")


def default_layer(n_layers: int) -> int:
    """The paper's behavioural layer: nearest to 0.55 x n_layers (Gemma-2-2B: 14)."""
    return int(round(0.55 * n_layers))


@dataclass(frozen=True)
class MarkersSpec:
    grid: str
    layer: int
    position: str = "p_last"
    conditions: tuple[str, ...] = CONDITIONS
    patch_steps: str = "prefill"
    cells: tuple[str, ...] = ()
    n_tokens: int = 80
    batch_size: int = 32
    evidence: bool = True  # score every answer by core.evidence (XY against BY, unedited model)

    def to_dict(self) -> dict:
        return asdict(self)


def check_spec(spec: MarkersSpec, grid: Grid, n_layers: int) -> None:
    bad = [c for c in spec.conditions if c not in CONDITIONS]
    if bad or not spec.conditions:
        raise SelectionError(f"unknown marker condition(s) {bad or list(spec.conditions)}; allowed: {list(CONDITIONS)}")
    if spec.patch_steps not in PATCH_STEPS:
        raise SelectionError(f"unknown --patch-steps {spec.patch_steps!r}; allowed: {list(PATCH_STEPS)}")
    if spec.position not in POSITIONS:
        raise SelectionError(f"unknown position {spec.position!r}; allowed: {list(POSITIONS)}")
    if not 0 <= spec.layer <= n_layers:
        raise SelectionError(f"layer {spec.layer} out of range; allowed: 0..{n_layers}")
    if not grid.markers:
        raise SelectionError(
            f"grid {grid.name!r} has no markers; the markers experiment needs a 'markers:' mapping "
            "(persona key -> list of marker words) in the grid file"
        )
    cells = grid.select_cells(list(spec.cells))
    missing = sorted({c.persona for c in cells} - set(grid.markers))
    if missing:
        raise SelectionError(f"grid {grid.name!r} has no markers for persona(s) {missing}")


def edit_vectors(capture_ds: xr.Dataset, layer: int, position: str, cells) -> dict[str, np.ndarray]:
    """Replacement vectors [cell, hidden] for the edited conditions, and the clean h_XY."""
    h = site_residuals(capture_ds, [layer], [position], [c.label for c in cells])[0, 0]
    return {"additive": vector(h, "additive"), "remove_persona": vector(h, "remove_persona"), "clean": vector(h, "oracle")}


def run(
    loaded, grid: Grid, spec: MarkersSpec, capture_ds: xr.Dataset | None = None, progress: bool = True,
    previous=None, checkpoint=None,
) -> xr.Dataset:
    """Generate and score; on Ctrl-C returns what was done (completed=0). `previous`: an unfinished
    result of the same spec whose generated rows are kept; `checkpoint`: called after every batch."""
    check_spec(spec, grid, loaded.n_layers)
    cells = grid.select_cells(list(spec.cells))
    conditions = [c for c in CONDITIONS if c in spec.conditions]
    vectors = {}
    if any(c in EDITED for c in conditions):
        if capture_ds is None:
            cap = capture_exp.CaptureSpec(
                grid=spec.grid, layers=(spec.layer,), positions=(spec.position,),
                cells=tuple(c.label for c in cells), batch_size=spec.batch_size,
            )
            capture_ds = capture_exp.builtin_capture(loaded, grid, cap, progress=progress)
        capture_exp.check_capture(capture_ds, loaded, [spec.layer], [spec.position], cells)
        vectors = edit_vectors(capture_ds, spec.layer, spec.position, cells)
    tok = loaded.tokenizer
    rows = []  # (cell index, condition, prompt)
    for ci, cell in enumerate(cells):
        for cond in conditions:
            if cond == "bare":
                prompt = render_prompt(tok, grid.tasks[cell.task])
            else:
                prompt = render_prompt(tok, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
            rows.append((ci, cond, prompt))
    texts = np.full((len(cells), len(conditions)), "", dtype=object)
    done = np.zeros((len(cells), len(conditions)), dtype=bool)
    scores = evidence_scorer.empty_scores((len(cells), len(conditions))) if spec.evidence else None
    if previous is not None:
        texts[:] = previous.text.isel(model=0).values
        done[:] = previous.generated.isel(model=0).values.astype(bool)
        if scores is not None:
            evidence_scorer.restore_scores(scores, previous.isel(model=0))
        rows = [r for r in rows if not done[r[0], conditions.index(r[1])]]
    rows = length_ordered(rows, lambda r: len(r[2].ids))
    pairs = evidence_scorer.grid_prompt_pairs(tok, grid, cells) if spec.evidence else None
    partial = lambda: _dataset(loaded, grid, spec, cells, conditions, texts, done, False, scores)
    step = GENERATED_POSITIONS[spec.position] + 1 if spec.position in GENERATED_POSITIONS else 0
    with stoppable() as stop:
        for rng in tqdm(list(chunked(len(rows), spec.batch_size)), desc="markers", disable=not progress):
            chunk = [rows[k] for k in rng]
            batch = left_pad([p.ids for _, _, p in chunk], loaded.pad_id)
            edit = _edit(chunk, batch, vectors, spec, step)
            tokens = generate_with_edit(loaded, batch, spec.n_tokens, edit)
            if scores is not None:  # on the unedited model: the edit above is not applied here
                answers = [evidence_scorer.answer_ids(tokens[r].tolist(), loaded.eos_ids) for r in range(len(chunk))]
                got = evidence_scorer.score_answers(loaded, [pairs[ci][0] for ci, _, _ in chunk],
                                                    [pairs[ci][1] for ci, _, _ in chunk], answers, spec.batch_size)
                evidence_scorer.store_scores(scores, got, [(ci, conditions.index(cond)) for ci, cond, _ in chunk])
            for r, (ci, cond, _) in enumerate(chunk):
                ki = conditions.index(cond)
                texts[ci, ki] = decode_answer(loaded, tokens[r].tolist())
                done[ci, ki] = True
            if checkpoint is not None:
                checkpoint(partial)
    return stop.mark(_dataset(loaded, grid, spec, cells, conditions, texts, done, stop.finished, scores))


def _edit(chunk, batch, vectors, spec, step) -> GenerationEdit | None:
    edited = [(r, ci, cond, p) for r, (ci, cond, p) in enumerate(chunk) if cond in EDITED]
    if not edited:
        return None
    rows = torch.tensor([r for r, *_ in edited])
    if step == 0:
        cols = torch.tensor([int(batch.pad[r]) + p.position(spec.position) for r, _, _, p in edited])
    else:
        cols = torch.full((len(edited),), -1)  # later steps feed one new token per row
    values = torch.from_numpy(np.stack([vectors[cond][ci] for _, ci, cond, _ in edited]))
    deltas = None
    if spec.patch_steps == "all":
        deltas = values - torch.from_numpy(np.stack([vectors["clean"][ci] for _, ci, _, _ in edited]))
    return GenerationEdit(layer=spec.layer, step=step, rows=rows, cols=cols, values=values, deltas=deltas)


def _dataset(loaded, grid, spec, cells, conditions, texts, done, completed, scores=None) -> xr.Dataset:
    marker_keys = [(p, m) for p, ms in grid.markers.items() for m in ms]
    counts = np.zeros((len(cells), len(conditions), len(marker_keys)), dtype=np.int64)
    any_marker = np.zeros((len(cells), len(conditions)), dtype=np.int8)
    n_distinct = np.zeros((len(cells), len(conditions)), dtype=np.int64)
    hits = np.full((len(cells), len(conditions)), "", dtype=object)
    for ci, cell in enumerate(cells):
        own = grid.markers[cell.persona]
        for ki in range(len(conditions)):
            found = marker_counts(texts[ci, ki], [m for _, m in marker_keys])
            counts[ci, ki] = [found[m] for _, m in marker_keys]
            own_hits = [m for m in dict.fromkeys(own) if found[m] > 0]
            any_marker[ci, ki] = int(bool(own_hits))
            n_distinct[ci, ki] = len(own_hits)
            hits[ci, ki] = "|".join(own_hits)
    dims = ("model", "cell", "condition")
    ds = xr.Dataset(
        {
            "text": (dims, texts[None]),
            "any_marker": (dims, any_marker[None]),
            "n_distinct": (dims, n_distinct[None]),
            "hits": (dims, hits[None]),
            "marker_count": (dims + ("marker",), counts[None]),
            "generated": (dims, done[None].astype(np.int8)),
        },
        coords={
            "model": [loaded.model_id],
            "cell": [c.label for c in cells],
            "condition": list(conditions),
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
            "marker": [f"{p}:{m}" for p, m in marker_keys],
            "marker_persona": ("marker", [p for p, _ in marker_keys]),
            "marker_text": ("marker", [m for _, m in marker_keys]),
        },
        attrs=provenance_attrs(loaded, "markers", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs["completed"] = int(completed)
    ds["any_marker"].attrs.update(long_name="any own-persona marker in the continuation")
    ds["n_distinct"].attrs.update(long_name="distinct own-persona markers")
    ds["marker_count"].attrs.update(long_name="occurrences of each grid marker (any persona's)")
    ds["generated"].attrs.update(long_name="1 where the continuation was generated (0: interrupted before)")
    if scores is not None:
        evidence_scorer.add_scores(ds, scores, dims, prompt_pair="XY against BY")
        ds = calibrate(ds)  # AUROC against bare, per-persona thresholds, in_persona
    ds.attrs["scorer"] = evidence_scorer.default_scorer(loaded.model_id) if scores is not None else "markers"
    return ds


def summary_table(ds: xr.Dataset) -> list[tuple[str, int, int, float]]:
    """Per condition: (condition, cells with a marker, cells, mean distinct markers), as the paper."""
    rows = []
    for cond in ds.condition.values:
        sel = ds.sel(condition=cond).isel(model=0)
        ok = sel.generated.values.astype(bool)
        rows.append((str(cond), int(sel.any_marker.values[ok].sum()), int(ok.sum()), float(sel.n_distinct.values[ok].mean()) if ok.any() else float("nan")))
    return rows


def evidence_table(ds: xr.Dataset) -> list[dict]:
    """Per condition, for the first model of a result scored with evidence: the mean evidence
    over cells with its 95% bootstrap interval, the answers with positive evidence, those in
    persona (above their persona's threshold and coherent) and the AUROC against bare."""
    from ...analysis.calibration import mean_interval

    if "evidence" not in ds:
        return []
    one = ds.isel(model=0)
    rows = []
    for cond in one.condition.values:
        sel = one.sel(condition=cond)
        ok = sel.generated.values.astype(bool) & np.isfinite(sel.evidence.values)
        mean, low, high = mean_interval(sel.evidence.values[ok])
        row = {"condition": str(cond), "mean evidence": f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
               "positive": f"{int((sel.evidence.values[ok] > 0).sum())}/{int(ok.sum())}"}
        if "in_persona" in one:
            row["in persona"] = f"{int(sel.in_persona.values[ok].sum())}/{int(ok.sum())}"
            auc = float(sel.evidence_auroc)
            row["AUROC vs bare"] = "" if np.isnan(auc) else f"{auc:.2f}"
        rows.append(row)
    return rows
