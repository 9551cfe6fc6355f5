"""vs-edit: steering along the persona vector at every response step against the one-site Delta_X
edit, on the same bare task prompts and layers (beyond the papers: the "cached residual cannot
replace the persona text" result seen from the steering side).

For each cell of a grid persona that is also a trait of a vectors file (the toy's pirate, robot,
poet), greedy answers to the bare task prompt (the task alone as the user turn) under:
- references (``reference`` dim): ``bare`` (no edit), ``prompted`` (the persona prompt XY, the
  ceiling), ``one_site`` (Delta_X = h_XB - h_BB at p_last and layer L, from a capture as inject
  and markers build their vectors, added at the bare prompt's p_last only: the prefill writes it,
  later steps do not);
- steering at every response step (``condition`` dim, positions ``response`` of `vectors steer`:
  the last prompt token at the prefill, then each new token) at layer L, over a coefficient sweep
  in units of |Delta_X| of the cell at L: ``vector`` adds coef x |Delta_X| x v / |v| (v the
  persona vector), so coef 1 is the persona vector at the one-site edit's size; ``delta_x`` adds
  coef x Delta_X itself, so coef 1 is the one-site edit repeated at every step.
Scored with the grid's persona markers (any marker, distinct markers, as `markers` does), the
evidence measure (core.evidence: the cell's XY prompt against its BY prompt, teacher-forced on the
unedited model, as `markers` scores its answers; `evidence`, `evidence_sum`, `answer_length`,
`reference_logp`, `evidence_coherent`, and `ref_...` for the references) and the trait's scorer
(trait score and coherence, as `vectors steer` does; the task is the question). With
`--scorer evidence` the trait score IS that evidence (nats/token) and the coherence 100 x the
answer's distinct token 3-grams.
Layer L = hidden_states[L].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core import evidence as core_evidence
from ...core.edits import GenerationEdit
from ...core.errors import SelectionError
from ...core.grids import Grid
from ...core.prompts import render_prompt
from ...storage.provenance import provenance_attrs
from ...core.scoring import markers_found
from ...core.replacements import delta_x, site_residuals
from ..xu2026 import capture as capture_exp
from .passes import check_layers, generate_answers
from .scorers import make_scorer
from .steer import steering_edit

CONDITIONS = ("vector", "delta_x")
REFERENCES = ("bare", "prompted", "one_site")


@dataclass(frozen=True)
class VsEditSpec:
    grid: str
    personas: tuple[str, ...]
    layers: tuple[int, ...]
    coefs: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0)  # in units of |Delta_X| at the cell and layer
    conditions: tuple[str, ...] = CONDITIONS
    token_set: str = "response_avg"
    n_tokens: int = 32
    batch_size: int = 16
    scorer: str = "offline"
    judge_model: str = "judge"
    vectors_file: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_spec(spec: VsEditSpec, grid: Grid, n_layers: int, vectors: xr.Dataset | None = None) -> None:
    bad = [c for c in spec.conditions if c not in CONDITIONS]
    if bad or not spec.conditions:
        raise SelectionError(f"unknown vs-edit condition(s) {bad or list(spec.conditions)}; allowed: {list(CONDITIONS)}")
    check_layers(spec.layers, n_layers)
    if not spec.coefs:
        raise SelectionError("--coefs needs at least one coefficient")
    if not spec.personas:
        raise SelectionError(f"no persona to compare: grid {grid.name!r} has personas {list(grid.personas)}")
    missing = [p for p in spec.personas if p not in grid.personas or not (grid.markers or {}).get(p)]
    if missing:
        raise SelectionError(f"persona(s) {missing} are not personas with markers of grid {grid.name!r}; allowed: "
                             f"{[p for p in grid.personas if (grid.markers or {}).get(p)]}")
    if vectors is not None:
        traits = vectors.trait.values.tolist()
        missing = [p for p in spec.personas if p not in traits]
        if missing:
            raise SelectionError(f"the vectors file has no trait {missing} (a persona is matched to the trait of "
                                 f"its name); it holds {traits}")
        layers = [L for L in spec.layers if L not in vectors.layer.values.tolist()]
        if layers:
            raise SelectionError(f"the vectors file has no layer {layers}; it holds {vectors.layer.values.tolist()}")
        if spec.token_set not in vectors.token_set.values.tolist():
            raise SelectionError(f"the vectors file has no token set {spec.token_set!r}; it holds "
                                 f"{vectors.token_set.values.tolist()}")


def one_site_edit(batch, layer: int, values: torch.Tensor) -> GenerationEdit:
    """`values` [rows, hidden] added at `layer` at each row's p_last (the last prompt column of a
    left-padded batch), at the prefill only."""
    n_rows, width = batch.input_ids.shape
    return GenerationEdit(layer=layer, step=0, rows=torch.arange(n_rows), cols=torch.full((n_rows,), width - 1),
                          values=values, add=True)


def _edit_maker(kind: str, layer: int, values: list[np.ndarray]):
    """make_edit(indices, batch) for generate_answers: the one-site edit or steering at every
    response step (steer's own edit), adding values[i] to batch row i's residual at `layer`."""
    def make_edit(idx, batch):
        v = torch.from_numpy(np.nan_to_num(np.stack([values[i] for i in idx]), nan=0.0).astype(np.float32))
        return one_site_edit(batch, layer, v) if kind == "one_site" else steering_edit(batch, layer, v, "response")

    return make_edit


def check_model(vectors: xr.Dataset, model_id: str) -> None:
    """A persona vector compared with this model's Delta_X must be this model's."""
    made_with = vectors.attrs.get("model_id")
    if made_with and made_with != model_id:
        raise SelectionError(f"the vectors file was made with model {made_with!r}, not {model_id!r}; extract "
                             f"vectors of {model_id!r} first")


def run(loaded, grid: Grid, traits, vectors: xr.Dataset, spec: VsEditSpec, capture_ds: xr.Dataset | None = None,
        progress: bool = True, scorer=None) -> xr.Dataset:
    check_spec(spec, grid, loaded.n_layers, vectors)
    check_model(vectors, loaded.model_id)
    scorer = scorer or make_scorer(spec.scorer, spec.judge_model)
    by_name = {t.name: t for t in traits}
    cells = [c for c in grid.cells if c.persona in spec.personas]
    labels, layers = [c.label for c in cells], list(spec.layers)
    if capture_ds is None:
        capture_ds = capture_exp.builtin_capture(loaded, grid, capture_exp.CaptureSpec(
            grid=spec.grid, layers=tuple(sorted(set(layers))), positions=("p_last",), cells=tuple(labels),
            batch_size=spec.batch_size), progress=progress)
    capture_exp.check_capture(capture_ds, loaded, layers, ["p_last"], cells)
    dx = delta_x(site_residuals(capture_ds, layers, ["p_last"], labels)[:, 0])  # [layer, cell, hidden]
    dx_norm = np.linalg.norm(dx, axis=-1)
    v = np.stack([[vectors.vector.sel(trait=c.persona, layer=L, token_set=spec.token_set).isel(model=0, checkpoint=0)
                   .values.astype(np.float32) for c in cells] for L in layers])  # [layer, cell, hidden]
    unit = v / np.linalg.norm(v, axis=-1, keepdims=True)

    tok = loaded.tokenizer
    bare = [list(render_prompt(tok, grid.tasks[c.task]).ids) for c in cells]
    prompted = [list(render_prompt(tok, grid.user_text(c, "XY"), grid.persona_text(c, "XY")).ids) for c in cells]
    # Rows: (reference or condition, coef, layer index or None, cell index); each group is one kind of edit at one layer.
    groups = {("bare", None): [("bare", None, None, ci) for ci in range(len(cells))],
              ("prompted", None): [("prompted", None, None, ci) for ci in range(len(cells))]}
    for li in range(len(layers)):
        groups[("one_site", li)] = [("one_site", None, li, ci) for ci in range(len(cells))]
        groups[("steer", li)] = [(cond, coef, li, ci) for cond in spec.conditions for coef in spec.coefs
                                 for ci in range(len(cells))]

    def added(row):
        what, coef, li, ci = row
        if what == "one_site":
            return dx[li, ci]
        if what == "vector":
            return coef * dx_norm[li, ci] * unit[li, ci]
        return coef * dx[li, ci]

    answers = {}
    for (kind, li), rows in groups.items():
        prompts = [prompted[r[3]] if kind == "prompted" else bare[r[3]] for r in rows]
        make_edit = None if li is None else _edit_maker(kind, layers[li], [added(r) for r in rows])
        desc = f"vs-edit: {kind}" + ("" if li is None else f" L{layers[li]}")
        for row, a in zip(rows, generate_answers(loaded, prompts, spec.n_tokens, spec.batch_size, make_edit=make_edit,
                                                 progress=progress, desc=desc)):
            answers[row] = a
    rows = list(answers)
    texts = {r: tok.decode(answers[r], skip_special_tokens=True) for r in rows}
    pairs = core_evidence.grid_prompt_pairs(tok, grid, cells)
    got = core_evidence.score_answers(loaded, [pairs[r[3]][0] for r in rows], [pairs[r[3]][1] for r in rows],
                                      [answers[r] for r in rows], batch_size=spec.batch_size, progress=progress,
                                      desc="vs-edit: evidence")
    scores = {r: {name: values[i] for name, values in got.as_dict().items()} for i, r in enumerate(rows)}
    trait_score, coherence = {}, {}
    if getattr(scorer, "needs_ids", False):
        trait_score = {r: scores[r]["evidence"] for r in rows}
        coherence = {r: 100.0 * scores[r]["coherence"] for r in rows}
    for persona in ([] if trait_score else spec.personas):
        mine = [r for r in rows if cells[r[3]].persona == persona]
        t, c = scorer.score(loaded, by_name[persona], [grid.tasks[cells[r[3]].task] for r in mine],
                            [texts[r] for r in mine], spec.batch_size)
        trait_score.update(zip(mine, t))
        coherence.update(zip(mine, c))
    ds = _dataset(loaded, grid, spec, cells, layers, rows, answers, texts, trait_score, coherence, dx, v, added,
                  scorer)
    _add_evidence(ds, cells, layers, rows, scores)
    return ds


def _add_evidence(ds, cells, layers, rows, scores) -> None:
    """The evidence variables over the steered (condition, coef, layer, cell) and reference
    (reference, layer, cell) answers (bare and prompted repeated at every layer, as their texts)."""
    conds, coefs = ds.condition.values.tolist(), ds.coef.values.tolist()
    names = [n for n in core_evidence.VARIABLES if n != "coherence"]  # coherence: the scorer's variable
    shape, rshape = (len(conds), len(coefs), len(layers), len(cells)), (len(REFERENCES), len(layers), len(cells))
    steer = {n: np.full(shape, np.nan) for n in names}
    ref = {n: np.full(rshape, np.nan) for n in names}
    for row in rows:
        what, coef, li, ci = row
        if what in REFERENCES:
            for lj in (range(len(layers)) if li is None else [li]):
                for n in names:
                    ref[n][REFERENCES.index(what), lj, ci] = scores[row][n]
        else:
            for n in names:
                steer[n][conds.index(what), coefs.index(coef), li, ci] = scores[row][n]
    for n in names:
        ds[n] = (("model", "condition", "coef", "layer", "cell"), steer[n][None])
        ds[f"ref_{n}"] = (("model", "reference", "layer", "cell"), ref[n][None])
        for name in (n, f"ref_{n}"):
            ds[name].attrs.update(core_evidence.ATTRS[n], prompt_pair="XY against BY, unedited model")


def _dataset(loaded, grid, spec, cells, layers, rows, answers, texts, trait_score, coherence, dx, v, added, scorer):
    conds, coefs, n_c, n_l = list(spec.conditions), list(spec.coefs), len(cells), len(layers)
    dx_norm = np.linalg.norm(dx, axis=-1)
    width = max([len(a) for a in answers.values()] + [1])
    shape, rshape = (len(conds), len(coefs), n_l, n_c), (len(REFERENCES), n_l, n_c)
    steer = {k: np.full(shape, np.nan) for k in ("any_marker", "n_distinct", "trait_score", "coherence", "added_norm")}
    ref = {k: np.full(rshape, np.nan) for k in ("any_marker", "n_distinct", "trait_score", "coherence", "added_norm")}
    steer_text, ref_text = np.full(shape, "", dtype=object), np.full(rshape, "", dtype=object)
    steer_ids, ref_ids = np.full(shape + (width,), -1, dtype=np.int64), np.full(rshape + (width,), -1, dtype=np.int64)
    for row in rows:
        what, coef, li, ci = row
        found = markers_found(texts[row], grid.markers[cells[ci].persona])
        values = {"any_marker": float(bool(found)), "n_distinct": float(len(found)), "trait_score": trait_score[row],
                  "coherence": coherence[row],
                  "added_norm": 0.0 if li is None else float(np.linalg.norm(np.nan_to_num(added(row))))}
        if what in REFERENCES:  # bare and prompted do not depend on the layer: the same answer at every layer
            for lj in (range(n_l) if li is None else [li]):
                k = (REFERENCES.index(what), lj, ci)
                for name, x in values.items():
                    ref[name][k] = x
                ref_text[k], ref_ids[k][: len(answers[row])] = texts[row], answers[row]
        else:
            k = (conds.index(what), coefs.index(coef), li, ci)
            for name, x in values.items():
                steer[name][k] = x
            steer_text[k], steer_ids[k][: len(answers[row])] = texts[row], answers[row]
    sdims, rdims = ("model", "condition", "coef", "layer", "cell"), ("model", "reference", "layer", "cell")
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (v * dx).sum(-1) / (np.linalg.norm(v, axis=-1) * dx_norm)
    data = {name: (sdims, x[None]) for name, x in steer.items()}
    data.update({f"ref_{name}": (rdims, x[None]) for name, x in ref.items()})
    data.update(
        text=(sdims, steer_text[None]), answer_ids=(sdims + ("answer_token",), steer_ids[None]),
        ref_text=(rdims, ref_text[None]), ref_answer_ids=(rdims + ("answer_token",), ref_ids[None]),
        marker_rate=(sdims[:-1], np.nanmean(steer["any_marker"], axis=-1)[None]),
        ref_marker_rate=(rdims[:-1], np.nanmean(ref["any_marker"], axis=-1)[None]),
        delta_x_norm=(("model", "layer", "cell"), dx_norm[None]),
        vector_norm=(("model", "layer", "cell"), np.linalg.norm(v, axis=-1)[None]),
        cos_vector_delta_x=(("model", "layer", "cell"), cos[None]),
    )
    ds = xr.Dataset(data, coords={
        "model": [loaded.model_id], "condition": conds, "coef": coefs, "layer": layers,
        "cell": [c.label for c in cells], "reference": list(REFERENCES),
        "persona": ("cell", [c.persona for c in cells]), "task": ("cell", [c.task for c in cells]),
    }, attrs=provenance_attrs(loaded, "vectors-vs-edit", {**spec.to_dict(), "grid_definition": grid.to_dict()}))
    ds.attrs.update(scorer=scorer.describe(), layer_convention="L = hidden_states[L]; 0 = embeddings", completed=1)
    ds["coef"].attrs.update(long_name="steering coefficient in units of |Delta_X| at the cell's p_last and layer")
    ds["any_marker"].attrs.update(long_name="1 when any of the persona's markers occurs in the steered answer")
    ds["marker_rate"].attrs.update(long_name="fraction of cells whose steered answer has a persona marker")
    ds["ref_marker_rate"].attrs.update(long_name="the same for the references: bare prompt, persona prompt, "
                                                 "one-site Delta_X edit at p_last")
    ds["added_norm"].attrs.update(long_name="L2 norm of what is added at each steered position")
    ds["delta_x_norm"].attrs.update(long_name="|Delta_X| = |h_XB - h_BB| at p_last")
    ds["vector_norm"].attrs.update(long_name="|persona vector| of the cell's persona")
    ds["answer_ids"].attrs.update(long_name="greedy answer token ids (cut at end of turn), -1 padded")
    return ds
