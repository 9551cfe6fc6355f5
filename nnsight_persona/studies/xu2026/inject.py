"""inject: can a cached residual replace the persona text? (the paper's negative result, section 7)

For each cell the host prompt is the baseline persona with the cell's task ("As a thoughtful
person, {task}", the BY prompt) and the target is the clean XY (persona) run. With the clean XY
continuation teacher-forced after both, the summed KL(target || host) of the next-token
distributions over the n_eval tokens from p_last measures how far the host is from the persona
run, under these conditions (each at every layer set: one layer, or a multi-layer clamp):
- ``host``: no edit;
- ``oracle``: the clean h_XY written at the host's p_last;
- ``cached``: h_BB + Delta_X + Delta_Y written there;
- ``cached_rescaled``: the cached vector rescaled to the clean residual's norm (a normalisation control);
- ``lm_host``, ``lm_oracle``, ``lm_cached``: the same on a length-matched host, padded with neutral
  filler to the persona prompt's token length, so length and absolute positions match.
``prefill`` patching writes at p_last only (the paper's); ``all`` also adds the edit's difference
(vector minus the host's own residual there) at every later teacher-forced position. The
injection-site ablation (``kl_site``) writes oracle or cached vectors at other layers and positions.
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
from ...core.prompts import POSITIONS, Prompt, render_prompt
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from ...core import tracing
from ...core.recipes import SiteTable, recipe, recipes_by_layer
from ...core.tracing import kl_in_sessions, read_residuals
from ...core.replacements import ORDER, rescaled, site_residuals, vector
from . import capture as capture_exp
from .native import CaptureRows, forced_tokens, sessions

CONDITIONS = ("host", "oracle", "cached", "cached_rescaled", "lm_host", "lm_oracle", "lm_cached")
SITE_CONDITIONS = ("oracle", "cached")
PAPER_N_LAYERS = 26  # the paper's clamp sets are layers of Gemma-2-2B
PAPER_CLAMPS = ((14,), (10, 12, 14), (10, 12, 14, 16, 18), (10, 12, 14, 16, 18, 20, 22), tuple(range(6, 23, 2)))
PATCH_STEPS = ("prefill", "all")


def scaled_layer_sets(n_layers: int, sets=PAPER_CLAMPS) -> list[tuple[int, ...]]:
    """The paper's single layer and clamp sets scaled to a model's depth (deduplicated)."""
    out = []
    for layer_set in sets:
        scaled = tuple(sorted({min(max(round(L * n_layers / PAPER_N_LAYERS), 1), n_layers - 1) for L in layer_set}))
        if scaled not in out:
            out.append(scaled)
    return out


def parse_layer_sets(text: str, n_layers: int) -> list[tuple[int, ...]]:
    """'14;10,12,14;6-22' -> [(14,), (10, 12, 14), (6, ..., 22)] (';' separates sets)."""
    from ...core.selection import parse_layers

    return [tuple(parse_layers(part, n_layers, default=[])) for part in text.split(";") if part.strip()]


@dataclass(frozen=True)
class InjectSpec:
    grid: str
    layer_sets: tuple[tuple[int, ...], ...]
    conditions: tuple[str, ...] = CONDITIONS
    patch_steps: str = "prefill"
    site_layers: tuple[int, ...] = ()
    site_positions: tuple[str, ...] = POSITIONS
    cells: tuple[str, ...] = ()
    n_eval: int = 10
    filler: str = " ."
    batch_size: int = 32
    batches_per_request: int = 8  # batches sent together in one nnsight session

    def to_dict(self) -> dict:
        return asdict(self)


def label(layer_set) -> str:
    return ",".join(str(L) for L in layer_set)


def length_matched_prompt(tokenizer, grid: Grid, cell, target_len: int, filler: str) -> Prompt:
    """The host prompt with `filler` repeated after the baseline persona until the prompt has
    `target_len` tokens (or the closest length not above it; the plain host prompt when even
    that is longer, e.g. for a persona shorter than the baseline persona)."""
    best = None
    for k in range(0, 4 * target_len):
        persona = grid.baseline_persona + filler * k
        user = grid.prompt_template.format(persona=persona, task=grid.tasks[cell.task])
        p = render_prompt(tokenizer, user, grid.baseline_persona)
        if len(p.ids) > target_len:
            break
        best = p
        if len(p.ids) == target_len:
            break
    return best or p


def run(
    loaded, grid: Grid, spec: InjectSpec, capture_ds: xr.Dataset | None = None, progress: bool = True,
    previous=None, checkpoint=None,
) -> xr.Dataset:
    """Run the injections; on Ctrl-C returns what was done (completed=0). `previous`: an unfinished
    result of the same spec whose finished rows are kept; `checkpoint`: called after every batch.

    Remote runs build every vector on the server, in the session of the batches that write it
    (native.py): only the continuation's token ids, the KLs and the norms come back."""
    _check(spec, loaded.n_layers)
    cells = grid.select_cells(list(spec.cells))
    labels = [c.label for c in cells]
    conditions = [c for c in CONDITIONS if c in spec.conditions]
    set_layers = sorted({L for s in spec.layer_sets for L in s})
    all_layers = sorted(set(set_layers) | set(spec.site_layers))
    site_positions = list(spec.site_positions) if spec.site_layers else []
    positions = [p for p in POSITIONS if p == "p_last" or p in site_positions]
    native = bool(loaded.remote)
    cap_spec = capture_exp.CaptureSpec(grid=spec.grid, layers=tuple(all_layers), positions=tuple(positions),
                                       cells=tuple(labels), batch_size=spec.batch_size)
    if capture_ds is None and native:
        # Only the clean continuation's token ids come here; the server reads the residuals itself.
        continuation = capture_exp.builtin_continuations(loaded, grid, cells, cap_spec.n_continuation,
                                                         spec.batch_size, progress)
    else:
        if capture_ds is None:
            capture_ds = capture_exp.builtin_capture(loaded, grid, cap_spec, progress=progress)
        capture_exp.check_capture(capture_ds, loaded, all_layers, positions, cells)
        continuation = capture_ds.continuation_ids.isel(model=0).sel(cell=labels).values
    if continuation.shape[1] < spec.n_eval - 1:
        raise SelectionError(f"the capture holds {continuation.shape[1]} continuation tokens; {spec.n_eval - 1} are needed")
    norms = {name: np.full((len(all_layers), len(cells)), np.nan, dtype=np.float32) for name in NORMS}
    if not native:  # a remote run takes only the continuation from a capture file: its residuals stay here
        h4 = site_residuals(capture_ds, all_layers, positions, labels)
        hv = {c: torch.from_numpy(h4[..., i, :]) for i, c in enumerate(ORDER)}  # [layer, position, cell, hidden]
        cached, oracle = torch.from_numpy(vector(h4, "additive")), hv["XY"]
        vectors = {"oracle": oracle, "cached": cached, "cached_rescaled": rescaled(cached, oracle)}
        lidx = {L: i for i, L in enumerate(all_layers)}
        pidx = {p: i for i, p in enumerate(positions)}
        p_last = pidx["p_last"]
        for name, t in (("norm_clean", hv["XY"]), ("norm_host", hv["BY"]), ("norm_injected", cached)):
            norms[name][:] = np.stack([t[lidx[L], p_last].norm(dim=-1).numpy() for L in all_layers])

    tok = loaded.tokenizer
    prompts = {}
    for ci, cell in enumerate(cells):
        xy = render_prompt(tok, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        prompts[ci] = {
            "target": xy,
            "host": render_prompt(tok, grid.user_text(cell, "BY"), grid.persona_text(cell, "BY")),
            "lm": length_matched_prompt(tok, grid, cell, len(xy.ids), spec.filler),
        }
    suffix = {ci: continuation[ci, : spec.n_eval - 1].tolist() for ci in range(len(cells))}
    own = _own_residuals(loaded, prompts, suffix, set_layers, spec) if spec.patch_steps == "all" and not native else None

    rows = []  # (cell, prompt kind, kind of result, index tuple, writes as (layer, position, condition))
    for ci in range(len(cells)):
        for kind, prefix in (("host", ""), ("lm", "lm_")):
            if prefix + "host" in conditions:
                rows.append((ci, kind, "kl", (prefix + "host", None), []))
            for si, layer_set in enumerate(spec.layer_sets):
                for cond in ("oracle", "cached", "cached_rescaled"):
                    if prefix + cond not in conditions:
                        continue
                    rows.append((ci, kind, "kl", (prefix + cond, si), [(L, "p_last", cond) for L in layer_set]))
        for L in spec.site_layers:
            for p in site_positions:
                for cond in SITE_CONDITIONS:
                    rows.append((ci, "host", "site", (cond, L, p), [(L, p, cond)]))

    kl = np.full((len(spec.layer_sets), len(cells), len(conditions)), np.nan)
    kl_site = np.full((len(spec.site_layers), len(site_positions), len(cells), len(SITE_CONDITIONS)), np.nan)
    if previous is not None:
        kl[:] = previous.kl.isel(model=0).values
        if spec.site_layers:
            kl_site[:] = previous.kl_site.isel(model=0).values
        if native:  # the norms came from the server with the rows they were computed beside
            for name in NORMS:
                norms[name][:] = previous[name].isel(model=0).sel(layer=all_layers).values
        rows = [r for r in rows if not _done(r, kl, kl_site, conditions, spec, site_positions)]
    partial = lambda: _dataset(loaded, grid, spec, cells, conditions, site_positions, kl, kl_site, norms, all_layers,
                               prompts, False)

    def batch_of(chunk, write):
        """(batch, writes as `write(row, ci, kind, what, layer, position, condition, col, width)` gives
        them, window_cols, reference_rows) for a chunk, and its clean rows."""
        cell_ids = sorted({r[0] for r in chunk})
        seqs = [list(prompts[ci]["target"].ids) + suffix[ci] for ci in cell_ids]
        seqs += [list(prompts[r[0]][r[1]].ids) + suffix[r[0]] for r in chunk]
        batch = left_pad(seqs, loaded.pad_id)
        width = batch.input_ids.shape[1]
        edits = []
        for r, (ci, kind, what, _, writes) in enumerate(chunk, start=len(cell_ids)):
            prompt = prompts[ci][kind]
            for L, p, cond in writes:
                edits += write(r, ci, kind, what, L, p, cond, int(batch.pad[r]) + prompt.position(p), width)
        windows = torch.arange(width - spec.n_eval, width).repeat(len(seqs), 1)
        refs = torch.tensor(list(range(len(cell_ids))) + [cell_ids.index(r[0]) for r in chunk])
        return (batch, edits, windows, refs), len(cell_ids)

    def local_writes(r, ci, kind, what, L, p, cond, col, width):
        vec = vectors[cond][lidx[L], pidx[p], ci]
        edits = [Write(row=r, layer=L, col=col, value=vec)]
        if own is not None and what == "kl":  # the site ablation stays a single write
            delta = vec - own[(ci, kind)][L]
            edits += [Write(row=r, layer=L, col=later, value=delta) for later in range(col + 1, width)]
        return edits

    def job(chunk):
        """(batch, writes, window_cols, reference_rows, knockout) for a chunk, and its clean rows."""
        (batch, edits, windows, refs), n_clean = batch_of(chunk, local_writes)
        return (batch, _layer_writes(edits, own is not None), windows, refs, None), n_clean

    # Rows written only at p_last and later leave their prompt's prefix clean, so locally that
    # prefix runs once per batch for all of them; the rows written earlier (site patches inside the
    # prompt) are batched apart and run whole.
    in_prompt = lambda r: any(prompts[r[0]][r[1]].position(p) < prompts[r[0]][r[1]].p_last for _, p, _ in r[4])
    chunks = []
    for part in ([r for r in rows if not in_prompt(r)], [r for r in rows if in_prompt(r)]):
        part = length_ordered(part, lambda r: len(prompts[r[0]]["target"].ids))  # a cell's rows stay together
        chunks += [[part[k] for k in rng] for rng in chunked(len(part), spec.batch_size)]

    def record(chunk, values):
        for (ci, _, what, index, _), value in zip(chunk, values):
            if what == "kl":
                cond, si = index
                for s in range(len(spec.layer_sets)) if si is None else [si]:
                    kl[s, ci, conditions.index(cond)] = value
            else:
                cond, L, p = index
                kl_site[spec.site_layers.index(L), site_positions.index(p), ci, SITE_CONDITIONS.index(cond)] = value

    with stoppable() as stop:
        if native:
            capture_rows = CaptureRows(capture_exp.render_cell_prompts(loaded, grid, cells), labels, continuation,
                                       forced_tokens(positions))
            for group, values in _native_sessions(loaded, spec, chunks, capture_rows, prompts, all_layers, norms,
                                                  batch_of, progress):
                for chunk, chunk_values in zip(group, values):
                    record(chunk, chunk_values)
                if checkpoint is not None:
                    checkpoint(partial)
        else:
            for chunk, values in kl_in_sessions(loaded, chunks, job, spec.batches_per_request, "inject", progress,
                                                reuse_prefix=True):
                record(chunk, values)
                if checkpoint is not None:
                    checkpoint(partial)
    return stop.mark(_dataset(loaded, grid, spec, cells, conditions, site_positions, kl, kl_site, norms, all_layers,
                              prompts, stop.finished))


NORMS = ("norm_clean", "norm_host", "norm_injected")  # |h_XY|, |h_BY| and |cached| at p_last
NORM_KINDS = ("XY", "BY", "additive")
RECIPE_KINDS = {"oracle": "oracle", "cached": "additive", "cached_rescaled": "additive_rescaled"}


def _native_sessions(loaded, spec, chunks, capture_rows, prompts, all_layers, norms, batch_of, progress):
    """The remote-native sweep of inject (native.py): yields (chunks, KL values per chunk) per
    session, and fills `norms` for the cells whose capture rows a session runs first. The
    every-step difference subtracts the host prompt's own residual at p_last, read in the same
    session (the BY capture row for the host, a row of its own for the length-matched host)."""
    patch_all = spec.patch_steps == "all"
    pending: list = []  # the cells whose norms the running session reads

    def own(number, ci, kind, L):
        return number[(L, (ci, "BY", "p_last") if kind == "host" else (ci, "lm", "p_last"))]

    def plan(group, table):
        new = sorted({r[0] for chunk in group for r in chunk if np.isnan(norms["norm_clean"][0, r[0]])})
        pending.append(new)
        for chunk in group:
            for ci, kind, what, _, writes in chunk:
                for L, p, _ in writes:
                    capture_rows.need(table, L, ci, p)
                    if patch_all and what == "kl" and kind == "host":
                        capture_rows.need(table, L, ci, "p_last")
                    elif patch_all and what == "kl":
                        lm = prompts[ci]["lm"]
                        table.need(L, (ci, "lm", "p_last"), (ci, "lm"), list(lm.ids), lm.p_last)
        _need_norms(capture_rows, table, new, all_layers)

        def write(number, r, ci, kind, what, L, p, cond, col, width):
            sources, name = capture_rows.sources(number, L, ci, p), RECIPE_KINDS[cond]
            edits = [(r, L, col, sources, name, None, None)]
            if patch_all and what == "kl":  # the site ablation stays a single write
                minus = own(number, ci, kind, L)
                edits += [(r, L, later, sources, name, None, minus) for later in range(col + 1, width)]
            return edits

        def build(number):
            jobs = []
            for chunk in group:
                (batch, edits, windows, refs), n_clean = batch_of(chunk, lambda *a: write(number, *a))
                first = {}
                for e in edits:
                    first.setdefault((e[0], e[1]), e[2])
                sets = recipes_by_layer([e for e in edits if e[2] == first[(e[0], e[1])]])
                adds = recipes_by_layer([e for e in edits if e[2] != first[(e[0], e[1])]], add=True)
                jobs.append(((batch, _in_layer_order(sets, adds), windows, refs), n_clean))
            return jobs, _norm_recipes(capture_rows, number, new, all_layers)

        return build

    for group, values, sizes in sessions(loaded, chunks, spec.batches_per_request, spec.batch_size, plan, "inject",
                                         progress):
        _store_norms(norms, pending.pop(), sizes)
        yield group, values
    missing = [ci for ci in range(norms["norm_clean"].shape[1]) if np.isnan(norms["norm_clean"][0, ci])]
    if missing:  # every row of these cells was done before (a resumed run without their norms)
        table = SiteTable()
        _need_norms(capture_rows, table, missing, all_layers)
        reads, number = table.finish(loaded.pad_id, spec.batch_size)
        _, sizes = tracing.window_kl_native_session(loaded, reads, [], _norm_recipes(capture_rows, number, missing,
                                                                                      all_layers))
        _store_norms(norms, missing, sizes)


def _need_norms(capture_rows, table, cells, layers) -> None:
    for ci in cells:
        for L in layers:
            capture_rows.need(table, L, ci, "p_last")


def _norm_recipes(capture_rows, number, cells, layers) -> list:
    """Per layer, the recipe whose vectors' norms are the dataset's norms of `cells` (NORM_KINDS
    by cell)."""
    if not cells:
        return []
    return [recipe(L, [(-1, -1, capture_rows.sources(number, L, ci, "p_last"), kind, None, None)
                       for kind in NORM_KINDS for ci in cells]) for L in layers]


def _store_norms(norms: dict, cells, sizes) -> None:
    for li, values in enumerate(sizes):
        values = values.reshape(len(NORMS), len(cells)).numpy()
        for k, name in enumerate(NORMS):
            norms[name][li, cells] = values[k]


def _in_layer_order(sets, adds) -> list:
    """Replacement and addition groups in layer order (the replacement first at each layer)."""
    out = []
    for layer in sorted({w.layer for w in sets} | {w.layer for w in adds}):
        out += [w for w in sets if w.layer == layer] + [w for w in adds if w.layer == layer]
    return out


def _done(row, kl, kl_site, conditions, spec, site_positions) -> bool:
    """Whether a row's result is already there (resuming)."""
    ci, _, what, index, _ = row
    if what == "kl":
        cond, si = index
        return not np.isnan(kl[0 if si is None else si, ci, conditions.index(cond)])
    cond, L, p = index
    return not np.isnan(kl_site[spec.site_layers.index(L), site_positions.index(p), ci, SITE_CONDITIONS.index(cond)])


def _layer_writes(edits: list[Write], patch_all: bool):
    """Writes at p_last replace the residual; the later columns (patching every step) add."""
    if not patch_all:
        return group_by_layer(edits)
    first = {}
    for w in edits:
        first.setdefault((w.row, w.layer), w.col)
    sets = [w for w in edits if w.col == first[(w.row, w.layer)]]
    adds = [w for w in edits if w.col != first[(w.row, w.layer)]]
    return _merge(group_by_layer(sets), group_by_layer(adds))


def _merge(sets, adds):
    """Interleave replacement and addition groups in layer order (replacement first)."""
    from ...core.edits import LayerWrites

    out = []
    for layer in sorted({w.layer for w in sets} | {w.layer for w in adds}):
        out += [w for w in sets if w.layer == layer]
        out += [LayerWrites(w.layer, w.rows, w.cols, w.values, add=True) for w in adds if w.layer == layer]
    return out


def _own_residuals(loaded, prompts, suffix, layers, spec) -> dict:
    """Each host prompt's own residual at p_last (for the every-step difference)."""
    keys = [(ci, kind) for ci in prompts for kind in ("host", "lm")]
    out = {}
    for rng in chunked(len(keys), spec.batch_size):
        chunk = [keys[k] for k in rng]
        batch = left_pad([list(prompts[ci][kind].ids) + suffix[ci] for ci, kind in chunk], loaded.pad_id)
        cols = batch.pad + torch.tensor([prompts[ci][kind].p_last for ci, kind in chunk])
        got = read_residuals(loaded, batch, torch.arange(len(chunk)), cols, list(layers))
        for k, key in enumerate(chunk):
            out[key] = {L: got[i, k] for i, L in enumerate(layers)}
    return out


def _check(spec: InjectSpec, n_layers: int) -> None:
    bad = [c for c in spec.conditions if c not in CONDITIONS]
    if bad or not spec.conditions:
        raise SelectionError(f"unknown inject condition(s) {bad or list(spec.conditions)}; allowed: {list(CONDITIONS)}")
    if spec.patch_steps not in PATCH_STEPS:
        raise SelectionError(f"unknown --patch-steps {spec.patch_steps!r}; allowed: {list(PATCH_STEPS)}")
    if not spec.layer_sets:
        raise SelectionError("no layer sets to inject at")
    for layer_set in list(spec.layer_sets) + [spec.site_layers]:
        bad = [L for L in layer_set if not 0 <= L <= n_layers]
        if bad:
            raise SelectionError(f"layer(s) {bad} out of range; allowed: 0..{n_layers}")
    bad = [p for p in spec.site_positions if p not in POSITIONS]
    if bad:
        raise SelectionError(f"unknown position(s) {bad}; allowed: {list(POSITIONS)}")


def _dataset(loaded, grid, spec, cells, conditions, site_positions, kl, kl_site, norms, norm_layers, prompts, completed):
    host_kl = kl[:, :, conditions.index("host")][..., None] if "host" in conditions else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):  # a host already at the target: no gap
        gap_closed = 1 - kl / host_kl
    data = {
        "kl": (("model", "layer_set", "cell", "condition"), kl[None]),
        "gap_closed": (("model", "layer_set", "cell", "condition"), gap_closed[None]),
        **{name: (("model", "layer", "cell"), norms[name][None]) for name in NORMS},
        "prompt_length": (("model", "cell", "prompt"), np.array([[len(prompts[ci][k].ids) for k in ("target", "host", "lm")] for ci in range(len(cells))])[None]),
    }
    coords = {
        "model": [loaded.model_id],
        "layer_set": [label(s) for s in spec.layer_sets],
        "cell": [c.label for c in cells],
        "condition": conditions,
        "layer": np.array(norm_layers, dtype=np.int64),
        "prompt": ["target", "host", "length_matched_host"],
        "persona": ("cell", [c.persona for c in cells]),
        "task": ("cell", [c.task for c in cells]),
    }
    if spec.site_layers:
        data["kl_site"] = (("model", "site_layer", "site_position", "cell", "site_condition"), kl_site[None])
        coords.update(site_layer=np.array(spec.site_layers, dtype=np.int64), site_position=site_positions,
                      site_condition=list(SITE_CONDITIONS))
    ds = xr.Dataset(data, coords=coords,
                    attrs=provenance_attrs(loaded, "inject", {**spec.to_dict(), "grid_definition": grid.to_dict()}))
    ds.attrs["completed"] = int(completed)
    ds["kl"].attrs.update(long_name=f"summed KL(target || host run) over {spec.n_eval} tokens", units="nats")
    ds["gap_closed"].attrs.update(long_name="gap closed, 1 - KL / KL(host)")
    ds["norm_clean"].attrs.update(long_name="|h_XY| at p_last")
    ds["norm_host"].attrs.update(long_name="|h_host| (= |h_BY|) at p_last")
    ds["norm_injected"].attrs.update(long_name="|h_BB + Delta_X + Delta_Y| at p_last")
    if spec.site_layers:
        ds["kl_site"].attrs.update(long_name="summed KL with the injection at another site", units="nats")
    return ds
