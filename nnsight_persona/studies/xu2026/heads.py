"""heads: which attention heads read the persona? A head sweep inside one band of decoder blocks.

Attention from the answer queries (as in ``knockout``) to the persona span of the XY prompt is
knocked out in one head of one block at a time, for every (block, head) of the band, and in the
whole band (every head of every block: the band's ``persona`` knockout). The heads are ranked by
the median over cells of a measure (``rank_by``: ``persona_shift`` by default, see knockout.py), and the top
k heads are then knocked out together, to check how much of the band's effect they account for.

One batch row carries one knockout: each row has its own blocks and heads (the kernel's mask is
built per row and per head), so a sweep of B blocks x H heads over C cells costs B*H*C rows in
batches of ``batch_size`` (plus the cells' unknocked XY and BY rows), not B*H separate runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from ...core.errors import SelectionError
from ...core.grids import Grid
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from . import capture as capture_exp
from .knockout import QUERIES, KnockRow, ScoreStats, cell_prompts, persona_shift, score_rows, toward_baseline

MEASURES = ("persona_shift", "kl", "toward_by")
RAW = ("kl", "kl_to_by", "logp_drop")


@dataclass(frozen=True)
class HeadSweepSpec:
    grid: str
    band: tuple[int, int]  # decoder blocks START..END-1
    queries: str = "answer"
    top_k: tuple[int, ...] = (1, 2, 4, 8)
    rank_by: str = "persona_shift"
    cells: tuple[str, ...] = ()
    n_eval: int = 10
    min_gap: float = 1.0
    batch_size: int = 32
    batches_per_request: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def best_band(knockout_ds: xr.Dataset, measure: str = "persona_shift", min_defined: float = 0.5) -> tuple[int, int]:
    """The band of a knockout result whose persona knockout has the largest median `measure` over
    cells; the all-blocks band only when it is the only one. A band counts only where the measure
    is defined (not NaN: the XY-vs-BY gap is large enough) in at least `min_defined` of the cells."""
    for name in (measure, "band_start", "band_end"):
        if name not in knockout_ds:
            raise SelectionError(f"the knockout dataset lacks {name!r}; rerun `nnsight-persona knockout` with this version")
    if "persona" not in [str(c) for c in knockout_ds.condition.values]:
        raise SelectionError("the knockout dataset has no 'persona' condition to choose a band by")
    ds = knockout_ds.isel(model=0) if "model" in knockout_ds.dims else knockout_ds
    starts, ends = ds.band_start.values, ds.band_end.values
    whole = (starts == starts.min()) & (ends == ends.max())
    keep = ~whole if (~whole).any() else whole
    values = ds[measure].sel(condition="persona").transpose("band", "cell").values
    defined = np.isfinite(values).mean(axis=1) >= min_defined
    median = np.where(keep & defined, _nanmedian(np.where(defined[:, None], values, 0.0)), -np.inf)
    if not np.isfinite(median).any():
        raise SelectionError(f"no band has {measure} defined in at least {min_defined:.0%} of the cells (it is NaN "
                             f"where the persona barely changes the answer); choose by another measure (--rank-by) "
                             f"or give --band START:END")
    best = int(np.argmax(median))
    return int(starts[best]), int(ends[best])


def group_sizes(top_k, n_total: int) -> list[int]:
    """The top-k group sizes below the number of heads (the all-heads group is always run), sorted,
    without repeats."""
    return sorted({int(k) for k in top_k if int(k) < n_total})


def rank_heads(values: np.ndarray) -> list[tuple[int, int]]:
    """(block index, head) pairs of a [block, head] array of medians, largest first (NaN last)."""
    flat = np.where(np.isnan(values), -np.inf, values).ravel()
    order = np.argsort(-flat, kind="stable")
    return [tuple(int(i) for i in np.unravel_index(j, values.shape)) for j in order]


def run(
    loaded, grid: Grid, spec: HeadSweepSpec, capture_ds: xr.Dataset | None = None, progress: bool = True,
    previous=None, checkpoint=None,
) -> xr.Dataset:
    """Single heads, then the top-k groups; on Ctrl-C returns what was done (completed=0)."""
    n_heads = loaded.lm._module.config.num_attention_heads
    _check(spec, loaded.n_layers)
    cells = grid.select_cells(list(spec.cells))
    labels = [c.label for c in cells]
    built = [cell_prompts(loaded.tokenizer, grid, c, None) for c in cells]
    prompts = [p for p, _ in built]
    persona = [tuple(keys["persona"]) for _, keys in built]
    if capture_ds is None:
        continuation = capture_exp.clean_continuations(loaded, [p["XY"] for p in prompts], spec.n_eval + 2,
                                                       spec.batch_size, progress)
    else:
        capture_exp.check_capture(capture_ds, loaded, [], [], cells)
        continuation = capture_ds.continuation_ids.isel(model=0).sel(cell=labels).values
    blocks = list(range(*spec.band))
    sizes = group_sizes(spec.top_k, len(blocks) * n_heads) + ["all"]
    n_cells = len(cells)
    single = {name: np.full((len(blocks), n_heads, n_cells), np.nan) for name in RAW}
    group = {name: np.full((len(sizes), n_cells), np.nan) for name in RAW}
    per_cell = {name: np.full(n_cells, np.nan) for name in ("gap", "kl_by_xy")}
    stats, clock = ScoreStats(), {"wall_s": 0.0}
    if previous is not None:
        prev = previous.isel(model=0)
        for name in RAW:
            single[name][:] = prev[name].values
            group[name][:] = prev[f"group_{name}"].values
        for name in per_cell:
            per_cell[name][:] = prev[name].values

    def ranking():  # an all-NaN head is ranked last
        return rank_heads(_nanmedian(_measures(single, per_cell, spec.min_gap)[spec.rank_by]))

    def rows_single():
        out = [(("head", bi, h, ci), KnockRow(ci, "XY", persona[ci], (b,), ((b, h),)))
               for ci in range(n_cells) for bi, b in enumerate(blocks) for h in range(n_heads)
               if np.isnan(single["kl"][bi, h, ci])]
        gi = len(sizes) - 1  # every head of every block of the band
        out += [(("group", gi, ci), KnockRow(ci, "XY", persona[ci], tuple(blocks), None))
                for ci in range(n_cells) if np.isnan(group["kl"][gi, ci])]
        return out

    def rows_groups(order):
        out = []
        for gi, k in enumerate(sizes[:-1]):
            top = [(blocks[bi], h) for bi, h in order[:k]]
            out += [(("group", gi, ci), KnockRow(ci, "XY", persona[ci], tuple(sorted({b for b, _ in top})), tuple(top)))
                    for ci in range(n_cells) if np.isnan(group["kl"][gi, ci])]
        return out

    make = lambda done: _dataset(loaded, grid, spec, cells, blocks, n_heads, sizes, single, group, per_cell,
                                 ranking(), persona, stats, clock, done)
    with stoppable() as stop:
        for phase in ("single", "groups"):
            rows = rows_single() if phase == "single" else rows_groups(ranking())
            start = time.perf_counter()
            for chunk, scores, cell_scores in score_rows(loaded, rows, prompts, continuation, spec.n_eval, spec.queries,
                                                         spec.batch_size, spec.batches_per_request, f"heads ({phase})",
                                                         progress, stats):
                for ci, (gap, kl_by_xy) in cell_scores.items():
                    per_cell["gap"][ci], per_cell["kl_by_xy"][ci] = gap, kl_by_xy
                for (key, _), (kl, kl_to_by, drop) in zip(chunk, scores):
                    target, index = (single if key[0] == "head" else group), key[1:]
                    target["kl_to_by"][index], target["logp_drop"][index] = kl_to_by, drop
                    target["kl"][index] = kl  # last: it marks the row done
                if checkpoint is not None:
                    checkpoint(lambda: make(False))
            clock["wall_s"] += time.perf_counter() - start
    return stop.mark(make(stop.finished))


def _measures(raw: dict, per_cell: dict, min_gap: float) -> dict:
    """kl, persona_shift and toward_by from the raw sums; the cell is the last axis."""
    return {
        "kl": raw["kl"],
        "persona_shift": persona_shift(raw["logp_drop"], per_cell["gap"], min_gap),
        "toward_by": toward_baseline(raw["kl_to_by"], per_cell["kl_by_xy"], min_gap),
    }


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median over the last axis (cells), skipping NaN; NaN where a slice has no value."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=-1)


def _check(spec: HeadSweepSpec, n_layers: int) -> None:
    start, end = spec.band
    if not 0 <= start < end <= n_layers:
        raise SelectionError(f"band {start}:{end} out of range; allowed 0 <= START < END <= {n_layers}")
    if spec.rank_by not in MEASURES:
        raise SelectionError(f"unknown --rank-by {spec.rank_by!r}; allowed: {list(MEASURES)}")
    if spec.queries not in QUERIES:
        raise SelectionError(f"unknown --queries {spec.queries!r}; allowed: {list(QUERIES)}")
    bad = [k for k in spec.top_k if int(k) < 1]
    if bad or not spec.top_k:
        raise SelectionError(f"top-k group sizes must be >= 1; got {list(spec.top_k)}")


def _dataset(loaded, grid, spec, cells, blocks, n_heads, sizes, single, group, per_cell, order, persona, stats,
             clock, completed) -> xr.Dataset:
    head_dims = ("model", "block", "head", "cell")
    group_dims = ("model", "group", "cell")
    m_single = _measures(single, per_cell, spec.min_gap)
    m_group = _measures(group, per_cell, spec.min_gap)
    medians = _nanmedian(m_single[spec.rank_by])
    group_median = _nanmedian(m_group[spec.rank_by])
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = group_median / group_median[-1]
    data = {
        "kl": (head_dims, single["kl"][None]),
        "logp_drop": (head_dims, single["logp_drop"][None]),
        "persona_shift": (head_dims, m_single["persona_shift"][None]),
        "kl_to_by": (head_dims, single["kl_to_by"][None]),
        "toward_by": (head_dims, m_single["toward_by"][None]),
        "group_kl": (group_dims, group["kl"][None]),
        "group_logp_drop": (group_dims, group["logp_drop"][None]),
        "group_persona_shift": (group_dims, m_group["persona_shift"][None]),
        "group_kl_to_by": (group_dims, group["kl_to_by"][None]),
        "group_toward_by": (group_dims, m_group["toward_by"][None]),
        "fraction_of_band": (("model", "group"), fraction[None]),
        "ranked_block": (("model", "rank"), np.array([blocks[bi] for bi, _ in order], dtype=np.int64)[None]),
        "ranked_head": (("model", "rank"), np.array([h for _, h in order], dtype=np.int64)[None]),
        "ranked_median": (("model", "rank"), np.array([medians[bi, h] for bi, h in order])[None]),
        "gap": (("model", "cell"), per_cell["gap"][None]),
        "kl_by_xy": (("model", "cell"), per_cell["kl_by_xy"][None]),
        "n_keys": (("model", "cell"), np.array([len(p) for p in persona], dtype=np.int64)[None]),
    }
    n_total = len(blocks) * n_heads
    ds = xr.Dataset(
        data,
        coords={
            "model": [loaded.model_id],
            "block": np.array(blocks, dtype=np.int64),
            "head": np.arange(n_heads, dtype=np.int64),
            "cell": [c.label for c in cells],
            "group": [f"top {k}" if k != "all" else "all heads" for k in sizes],
            "group_size": ("group", np.array([n_total if k == "all" else k for k in sizes], dtype=np.int64)),
            "rank": np.arange(n_total, dtype=np.int64),
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
        },
        attrs=provenance_attrs(loaded, "heads", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs.update(completed=int(completed), passes=stats.passes, rows=stats.rows, max_rows_per_pass=stats.max_rows,
                    sweep_wall_s=round(clock["wall_s"], 3))
    n = spec.n_eval
    ds["kl"].attrs.update(long_name=f"summed KL(XY || one head knocked out) over {n} tokens", units="nats")
    ds["logp_drop"].attrs.update(long_name=f"log-prob drop of the {n} clean tokens", units="nats")
    ds["persona_shift"].attrs.update(long_name="persona shift, log-prob drop / (log p_XY - log p_BY)", units="1")
    ds["kl_to_by"].attrs.update(long_name=f"summed KL(BY || knocked out) over {n} tokens", units="nats")
    ds["toward_by"].attrs.update(long_name="toward BY, 1 - KL(BY || knocked) / KL(BY || XY)", units="1")
    for name in ("kl", "logp_drop", "persona_shift", "kl_to_by", "toward_by"):
        ds[f"group_{name}"].attrs.update({**ds[name].attrs, "long_name": ds[name].attrs["long_name"].replace(
            "one head", "a group of heads") + " (heads knocked out together)"})
    ds["fraction_of_band"].attrs.update(long_name=f"median {spec.rank_by} of the group / median of all heads", units="1")
    ds["ranked_median"].attrs.update(long_name=f"median {spec.rank_by} over cells of the head at this rank")
    ds["block"].attrs.update(long_name="decoder block (reads hidden_states[block])")
    ds["head"].attrs.update(long_name="attention head")
    ds["group"].attrs.update(long_name="heads knocked out together (top k by single-head effect)")
    ds["gap"].attrs.update(long_name=f"log p_XY - log p_BY of the {n} clean tokens", units="nats")
    ds["kl_by_xy"].attrs.update(long_name=f"summed KL(BY || XY) over {n} tokens", units="nats")
    ds["n_keys"].attrs.update(long_name="persona key positions knocked out")
    return ds


def summary_rows(ds: xr.Dataset, n_top: int = 10) -> tuple[list[dict], list[dict]]:
    """The top heads (rank, block, head, medians over cells) and the groups (size, medians,
    fraction of the all-heads effect), for the first model of a result."""
    ds = ds.isel(model=0) if "model" in ds.dims else ds
    rank_by = spec_measure(ds)
    top = []
    for rank in range(min(n_top, ds.sizes["rank"])):
        block, head = int(ds.ranked_block[rank]), int(ds.ranked_head[rank])
        at = ds.sel(block=block, head=head)
        top.append({"rank": rank + 1, "block": block, "head": head,
                    **{f"median {v}": float(_nanmedian(at[v].values)) for v in ("persona_shift", "kl", "toward_by")}})
    groups = [{"group": str(g), "heads": int(ds.group_size.sel(group=g)),
               **{f"median {v}": float(_nanmedian(ds[f"group_{v}"].sel(group=g).values))
                  for v in ("persona_shift", "kl", "toward_by")},
               f"fraction of band ({rank_by})": float(ds.fraction_of_band.sel(group=g))} for g in ds.group.values]
    return top, groups


def spec_measure(ds: xr.Dataset) -> str:
    """The measure a head-sweep result ranked its heads by."""
    from ...storage.store import spec_of

    return spec_of(ds).get("rank_by", "persona_shift")
