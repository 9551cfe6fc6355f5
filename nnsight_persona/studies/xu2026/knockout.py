"""knockout: does persona behaviour flow through attention back to the persona tokens?

Attention from chosen query positions to a span of key positions is removed in a band of decoder
blocks (through the attention kernel's mask argument, so it holds for eager and sdpa, single
passes and every generation step). Queries: ``answer`` = p_last and every generated token;
``generated`` = generated tokens only.

Conditions (what is knocked out, on which prompt, compared with which unknocked run):
- ``persona``: the persona span of the XY prompt; reference: the clean XY run;
- ``task_span``: as many keys outside the persona span, the task text first (then earlier prompt
  tokens); XY; reference XY. Cutting the answer off from its task: not a persona control;
- ``neutral_span``: the filler span of a neutral host ("As {baseline persona}{filler x k}, {task}",
  the construction of inject's length-matched host) with as many filler tokens as the persona
  span has; reference: the same host unknocked. What removing any same-size neutral text costs;
- ``template_span``: as many keys from the tokens before the persona (chat template, system turn,
  the template's "As"), nearest first, never the first token; XY; reference XY. These tokens
  can carry neither persona nor task (they come before both);
- ``baseline_persona``: the baseline persona's span in the BY prompt; reference: the clean BY run.
  What removing any persona-slot text costs;
- ``none``: nothing; equals the clean run bit for bit.
Where a prompt has fewer candidate keys than the persona span, a control knocks out fewer
(``n_keys`` records how many); ``kl_per_key`` and ``persona_shift_per_key`` normalise by that count.

Measured on the n_eval clean XY continuation tokens t teacher-forced from p_last:
- ``kl``: summed KL(reference || knocked out) of the next-token distributions;
- ``persona_shift``, the persona-specific measure: with gap = sum_t [log p_XY(t) - log p_BY(t)], shift =
  sum_t [log p_ref(t) - log p_knocked(t)] / gap: 0 when nothing changes, 1 when the knocked-out
  run gives the clean tokens the BY run's probability (for conditions on another prompt: the
  drop on that prompt, in units of the same gap). NaN where gap < min_gap;
- ``toward_by`` (conditions on the XY prompt): 1 - sum KL(BY || knocked) / sum KL(BY || XY): 0 for
  no change, 1 when the knocked-out distributions equal BY's, negative when the knockout moves
  them away from BY (noise also lowers the clean tokens' probability, which raises persona_shift:
  read the two together). NaN where KL(BY || XY) < min_gap;
- for grids with markers, whether persona markers survive in n_tokens greedy tokens generated
  with the knockout held at every step, and (with ``evidence``, the default) each answer's
  evidence (core.evidence): XY prompt against BY prompt of the cell, on the unedited model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

from ...core.batching import chunked, left_pad, length_ordered
from ...core import evidence as evidence_scorer
from ...core.edits import Knockout
from ...core.errors import SelectionError
from ...core.grids import Grid
from ...core.prompts import Prompt, render_prompt
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from ...core.scoring import markers_found
from ...core.tracing import decode_answer, generate_with_edit, window_scores_on_prefix, window_scores_session
from . import capture as capture_exp

CONDITIONS = ("persona", "task_span", "neutral_span", "template_span", "baseline_persona", "none")
PROMPT_OF = {"persona": "XY", "task_span": "XY", "neutral_span": "neutral", "template_span": "XY",
             "baseline_persona": "BY", "none": "XY"}
RENAMED = {"control": "task_span"}
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
    filler: str = " ."  # the neutral_span host's filler (as inject's length-matched host)
    min_gap: float = 1.0  # nats: below it persona_shift / toward_by are NaN (no persona effect to measure)
    batch_size: int = 32
    batches_per_request: int = 8  # KL batches sent together in one nnsight session
    evidence: bool = True  # score the generated answers by core.evidence (XY against BY, unedited model)

    def to_dict(self) -> dict:
        return asdict(self)


# --- key positions of each condition (token indices into the unpadded prompt) -------------------

def control_positions(prompt: Prompt, n: int) -> list[int]:
    """task_span: n key positions outside the persona span: the user text after the persona (the
    task) first, then earlier prompt tokens, never the first token (an attention sink) nor p_last."""
    start, end = prompt.persona_span
    after = list(range(end, prompt.p_user_text_last + 1))
    before = list(range(1, start))
    return (after + before)[:n]


def template_positions(prompt: Prompt, n: int) -> list[int]:
    """template_span: up to n tokens before the persona span (chat template, system turn, the
    prompt template's words before the persona), nearest to the persona first, never the first
    token. Coming before the persona and the task, they can carry neither."""
    return list(range(prompt.persona_span[0] - 1, 0, -1))[:n]


def neutral_host(tokenizer, grid: Grid, cell, n_keys: int, filler: str) -> tuple[Prompt, list[int]]:
    """The neutral_span host: "As {baseline persona}{filler x k}, {task}" (inject's length-matched
    host), with k the largest count whose filler span has at most n_keys tokens (k = 1 and its
    first n_keys tokens when one filler is already longer); returns the prompt (persona_span = the
    baseline persona) and the filler's token positions."""
    best = None
    for k in range(1, 4 * max(n_keys, 1) + 2):
        persona = grid.baseline_persona + filler * k
        user = grid.prompt_template.format(persona=persona, task=grid.tasks[cell.task])
        host = render_prompt(tokenizer, user, grid.baseline_persona)
        span = list(range(host.persona_span[1], render_prompt(tokenizer, user, persona).persona_span[1]))
        if len(span) > n_keys:
            break
        best = (host, span)
        if len(span) == n_keys:
            break
    return best if best is not None else (host, span[:n_keys])


def cell_prompts(tokenizer, grid: Grid, cell, filler: str | None) -> tuple[dict, dict]:
    """The prompts of one cell ("XY", "BY" and, given a filler, "neutral") and the key positions
    of every condition."""
    xy = render_prompt(tokenizer, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
    by = render_prompt(tokenizer, grid.user_text(cell, "BY"), grid.persona_text(cell, "BY"))
    n = xy.persona_span[1] - xy.persona_span[0]
    prompts = {"XY": xy, "BY": by}
    keys = {
        "persona": list(range(*xy.persona_span)),
        "task_span": control_positions(xy, n),
        "template_span": template_positions(xy, n),
        "baseline_persona": list(range(*by.persona_span)),
        "none": [],
    }
    if filler is not None:
        prompts["neutral"], keys["neutral_span"] = neutral_host(tokenizer, grid, cell, n, filler)
    return prompts, keys


# --- the persona-specific measures (pure arithmetic on the sums the traces return) --------------

def persona_shift(drop, gap, min_gap: float):
    """drop / gap, NaN where gap < min_gap: the fraction of the XY-vs-BY log-prob gap of the clean
    tokens that a knockout removes (drop = sum log p_ref - sum log p_knocked)."""
    drop, gap = np.asarray(drop, dtype=float), np.asarray(gap, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap >= min_gap, drop / gap, np.nan)


def toward_baseline(kl_to_baseline, kl_clean_to_baseline, min_gap: float):
    """1 - KL(BY || knocked) / KL(BY || XY), NaN where KL(BY || XY) < min_gap: 0 without change,
    1 when the knocked-out distributions are BY's, negative when they move away from BY."""
    a, b = np.asarray(kl_to_baseline, dtype=float), np.asarray(kl_clean_to_baseline, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b >= min_gap, 1 - a / b, np.nan)


# --- batched scoring of knocked-out rows, shared with the head sweep -----------------------------

@dataclass(frozen=True)
class KnockRow:
    """One knocked-out run of a cell: on which prompt, which keys, in which blocks and heads."""

    cell: int
    prompt: str  # "XY", "BY" or "neutral"
    keys: tuple[int, ...]  # unpadded token indices no blocked query may read
    blocks: tuple[int, ...]
    heads: tuple[tuple[int, int], ...] | None = None  # (block, head) pairs; None: every head of `blocks`


@dataclass
class ScoreStats:
    passes: int = 0  # forward passes
    rows: int = 0  # batch rows, reference rows included
    max_rows: int = 0  # the widest pass


def score_rows(loaded, rows: list, prompts: list[dict], targets: np.ndarray, n_eval: int, queries: str,
               batch_size: int, per_request: int, desc: str, progress: bool, stats: ScoreStats | None = None,
               reuse_prefix: bool = True):
    """Score knocked-out rows in batched passes. `rows`: (key, KnockRow) pairs; `prompts[cell]`:
    the cell's prompts by name; `targets` [cells, >= n_eval]: the clean XY continuation tokens.
    Every batch also holds each of its cells' unknocked XY and BY rows (and the neutral host's when a
    row needs it). Yields, chunk by chunk, (chunk, scores [rows, 3] = (KL to the row's own
    unknocked reference, KL(BY || row), log-prob drop sum log p_ref - sum log p_row), cells) with
    cells {cell: (gap = sum log p_XY - sum log p_BY, KL(BY || XY))}. Locally (`reuse_prefix`), the
    columns before p_last, which no knockout touches, run once per distinct prompt of a batch;
    remote runs send whole sequences."""
    from ...core.progress import tqdm

    n_heads = loaded.lm._module.config.num_attention_heads
    suffix = [list(map(int, targets[ci, : n_eval - 1])) for ci in range(len(prompts))]
    ordered = length_ordered(rows, lambda r: len(prompts[r[1].cell][r[1].prompt].ids))  # a cell's rows stay together
    chunks = [[ordered[k] for k in rng] for rng in chunked(len(ordered), batch_size)]

    def job(chunk):
        cells = sorted({row.cell for _, row in chunk})
        refs = [(ci, kind) for ci in cells for kind in ("XY", "BY")]
        refs += sorted({(row.cell, row.prompt) for _, row in chunk} - set(refs))
        at = {ref: i for i, ref in enumerate(refs)}
        knocked = [row for _, row in chunk]
        seqs = [list(prompts[ci][kind].ids) + suffix[ci] for ci, kind in refs]
        seqs += [list(prompts[row.cell][row.prompt].ids) + suffix[row.cell] for row in knocked]
        batch = left_pad(seqs, loaded.pad_id)
        width = batch.input_ids.shape[1]
        cell_of = [ci for ci, _ in refs] + [row.cell for row in knocked]
        own = torch.tensor(list(range(len(refs))) + [at[(row.cell, row.prompt)] for row in knocked])
        base = torch.tensor([at[(ci, "BY")] for ci in cell_of])
        tgt = torch.tensor(np.asarray(targets)[cell_of, :n_eval].astype(np.int64))
        windows = torch.arange(width - n_eval, width).repeat(len(seqs), 1)
        knock = knockout_for(batch, [None] * len(refs) + knocked, prompts, queries, loaded.n_layers, n_heads)
        return (batch, [], windows, own, knock, base, tgt), refs, at

    whole = loaded.remote or not reuse_prefix
    per_request = max(1, per_request) if whole else 1  # a local batch is yielded when it is done
    with tqdm(total=len(chunks), desc=desc, disable=not progress) as bar:
        for start in range(0, len(chunks), per_request):
            group = chunks[start : start + per_request]
            jobs = [job(chunk) for chunk in group]
            if whole:  # whole sequences, several batches a request
                results = window_scores_session(loaded, [j for j, _, _ in jobs])
            else:  # queries are knocked out from p_last on: each prompt's prefix runs once, clean
                results = [window_scores_on_prefix(loaded, *j) for j, _, _ in jobs]
            for chunk, (j, refs, at), got in zip(group, jobs, results):
                if stats is not None:
                    stats.passes += 1
                    stats.rows += got.shape[0]
                    stats.max_rows = max(stats.max_rows, got.shape[0])
                got = got.double()
                n_refs = len(refs)
                own = j[3]
                drop = got[own, 2] - got[:, 2]
                scores = torch.stack([got[:, 0], got[:, 1], drop], dim=-1)[n_refs:].numpy()
                cells = {ci: (float(got[at[(ci, "XY")], 2] - got[at[(ci, "BY")], 2]), float(got[at[(ci, "XY")], 1]))
                         for ci, kind in refs if kind == "XY"}
                yield chunk, scores, cells
                bar.update()


def knockout_for(batch, rows: list, prompts: list[dict], queries: str, n_layers: int, n_heads: int) -> Knockout:
    """One Knockout for a left-padded batch; `rows`: a KnockRow per batch row, or None (untouched)."""
    n_rows, width = batch.input_ids.shape
    key_mask = torch.zeros(n_rows, width, dtype=torch.bool)
    query_mask = torch.zeros(n_rows, width, dtype=torch.bool)
    active = torch.zeros(n_rows, n_layers, dtype=torch.bool)
    per_head = any(row is not None and row.heads is not None for row in rows)
    head_mask = torch.zeros(n_rows, n_layers, n_heads, dtype=torch.bool) if per_head else None
    for r, row in enumerate(rows):
        if row is None or not row.keys:
            continue
        pad = int(batch.pad[r])
        prompt = prompts[row.cell][row.prompt]
        key_mask[r, [pad + i for i in row.keys]] = True
        first_query = prompt.p_last if queries == "answer" else len(prompt.ids)
        query_mask[r, pad + first_query :] = True
        active[r, list(row.blocks)] = True
        if head_mask is not None:
            if row.heads is None:
                head_mask[r, list(row.blocks)] = True
            else:
                for block, head in row.heads:
                    head_mask[r, block, head] = True
    return Knockout(keys=key_mask, queries=query_mask, active=active, generated=True, head_mask=head_mask)


# --- the band sweep -------------------------------------------------------------------------------

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
    filler = spec.filler if "neutral_span" in conditions else None
    built = [cell_prompts(loaded.tokenizer, grid, c, filler) for c in cells]
    prompts = [p for p, _ in built]
    keys = {(ci, cond): built[ci][1][cond] for ci in range(len(cells)) for cond in conditions}
    if capture_ds is None:  # only the clean continuations are needed: no residuals
        continuation = capture_exp.clean_continuations(loaded, [p["XY"] for p in prompts], spec.n_eval + 2,
                                                       spec.batch_size, progress)
    else:
        capture_exp.check_capture(capture_ds, loaded, [], [], cells)
        continuation = capture_ds.continuation_ids.isel(model=0).sel(cell=labels).values
    if continuation.shape[1] < spec.n_eval:
        raise SelectionError(f"the capture holds {continuation.shape[1]} continuation tokens; {spec.n_eval} are needed")

    shape = (len(spec.bands), len(cells), len(conditions))
    res = {name: np.full(shape, np.nan) for name in ("kl", "kl_to_by", "logp_drop")}
    per_cell = {name: np.full(len(cells), np.nan) for name in ("gap", "kl_by_xy")}
    with_markers = bool(grid.markers) and spec.n_tokens > 0
    texts = np.full(shape, "", dtype=object)
    answer_scores = evidence_scorer.empty_scores(shape) if with_markers and spec.evidence else None
    todo = [(ci, bi, k) for ci in range(len(cells)) for bi in range(len(spec.bands)) for k in range(len(conditions))]
    if previous is not None:
        prev = previous.isel(model=0)
        for name in res:
            res[name][:] = prev[name].values
        for name in per_cell:
            per_cell[name][:] = prev[name].values
        if with_markers:
            texts[:] = prev.text.values
        if answer_scores is not None:
            evidence_scorer.restore_scores(answer_scores, prev)
        todo = [(ci, bi, k) for ci, bi, k in todo if np.isnan(res["kl"][bi, ci, k])]

    def knock_row(ci, bi, k) -> KnockRow:
        cond = conditions[k]
        blocks = tuple(range(*spec.bands[bi]))
        heads = None if spec.heads is None else tuple((b, h) for b in blocks for h in spec.heads)
        return KnockRow(ci, PROMPT_OF[cond], tuple(keys[(ci, cond)]), blocks, heads)

    n_heads = loaded.lm._module.config.num_attention_heads
    make = lambda done: _dataset(loaded, grid, spec, cells, conditions, res, per_cell,
                                 texts if with_markers else None, keys, prompts, done, answer_scores)
    pairs = [(p["XY"].ids, p["BY"].ids) for p in prompts]
    rows = [((ci, bi, k), knock_row(ci, bi, k)) for ci, bi, k in todo]
    with stoppable() as stop:
        for chunk, scores, cell_scores in score_rows(loaded, rows, prompts, continuation, spec.n_eval, spec.queries,
                                                     spec.batch_size, spec.batches_per_request, "knockout", progress):
            if with_markers:  # generation holds the knockout at every step: one request per batch
                gen_batch = left_pad([list(prompts[row.cell][row.prompt].ids) for _, row in chunk], loaded.pad_id)
                gen_knock = knockout_for(gen_batch, [row for _, row in chunk], prompts, spec.queries, loaded.n_layers, n_heads)
                tokens = generate_with_edit(loaded, gen_batch, spec.n_tokens, knockout=gen_knock)
                for r, ((ci, bi, k), _) in enumerate(chunk):
                    texts[bi, ci, k] = decode_answer(loaded, tokens[r].tolist())
                if answer_scores is not None:  # on the unedited model: no knockout here
                    answers = [evidence_scorer.answer_ids(t.tolist(), loaded.eos_ids) for t in tokens]
                    got = evidence_scorer.score_answers(loaded, [pairs[row.cell][0] for _, row in chunk],
                                                        [pairs[row.cell][1] for _, row in chunk], answers, spec.batch_size)
                    evidence_scorer.store_scores(answer_scores, got, [(bi, ci, k) for (ci, bi, k), _ in chunk])
            for ci, (gap, kl_by_xy) in cell_scores.items():
                per_cell["gap"][ci], per_cell["kl_by_xy"][ci] = gap, kl_by_xy
            # The KL marks a row done, so it is written last.
            for ((ci, bi, k), row), (kl, kl_to_by, drop) in zip(chunk, scores):
                res["kl_to_by"][bi, ci, k] = kl_to_by if row.prompt == "XY" else np.nan
                res["logp_drop"][bi, ci, k] = drop
                res["kl"][bi, ci, k] = kl
            if checkpoint is not None:
                checkpoint(lambda: make(False))
    return stop.mark(make(stop.finished))


def _check(spec: KnockoutSpec, loaded) -> None:
    renamed = [c for c in spec.conditions if c in RENAMED]
    if renamed:
        raise SelectionError(f"knockout condition(s) {renamed} renamed: use {[RENAMED[c] for c in renamed]}; "
                             f"allowed: {list(CONDITIONS)}")
    bad = [c for c in spec.conditions if c not in CONDITIONS]
    if bad or not spec.conditions:
        raise SelectionError(f"unknown knockout condition(s) {bad or list(spec.conditions)}; allowed: {list(CONDITIONS)}")
    if spec.queries not in QUERIES:
        raise SelectionError(f"unknown --queries {spec.queries!r}; allowed: {list(QUERIES)}")
    if "neutral_span" in spec.conditions and not spec.filler.strip():
        raise SelectionError(f"the neutral_span filler {spec.filler!r} must hold a visible character (e.g. ' .')")
    if spec.n_eval < 1:
        raise SelectionError(f"n_eval must be >= 1, got {spec.n_eval}")
    for start, end in spec.bands:
        if not 0 <= start < end <= loaded.n_layers:
            raise SelectionError(f"band {start}:{end} out of range; allowed 0 <= START < END <= {loaded.n_layers}")
    if spec.heads is not None:
        n_heads = loaded.lm._module.config.num_attention_heads
        bad = [h for h in spec.heads if not 0 <= h < n_heads]
        if bad:
            raise SelectionError(f"head(s) {bad} out of range; allowed: 0..{n_heads - 1}")


def _dataset(loaded, grid, spec, cells, conditions, res, per_cell, texts, keys, prompts, completed,
             scores=None) -> xr.Dataset:
    dims = ("model", "band", "cell", "condition")
    n_keys = np.array([[len(keys[(ci, c)]) for c in conditions] for ci in range(len(cells))])
    width = max(1, int(n_keys.max()))
    positions = np.full((len(cells), len(conditions), width), -1, dtype=np.int64)
    for ci in range(len(cells)):
        for k, c in enumerate(conditions):
            positions[ci, k, : n_keys[ci, k]] = keys[(ci, c)]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_key = np.where(n_keys > 0, 1.0 / n_keys, np.nan)[None]  # [1, cell, condition]
    shift = persona_shift(res["logp_drop"], per_cell["gap"][None, :, None], spec.min_gap)
    toward = toward_baseline(res["kl_to_by"], per_cell["kl_by_xy"][None, :, None], spec.min_gap)
    data = {
        "kl": (dims, res["kl"][None]),
        "kl_per_key": (dims, (res["kl"] * per_key)[None]),
        "logp_drop": (dims, res["logp_drop"][None]),
        "persona_shift": (dims, shift[None]),
        "persona_shift_per_key": (dims, (shift * per_key)[None]),
        "kl_to_by": (dims, res["kl_to_by"][None]),
        "toward_by": (dims, toward[None]),
        "gap": (("model", "cell"), per_cell["gap"][None]),
        "kl_by_xy": (("model", "cell"), per_cell["kl_by_xy"][None]),
        "n_keys": (("model", "cell", "condition"), n_keys[None]),
        "key_positions": (("model", "cell", "condition", "key"), positions[None]),
        "prompt_length": (("model", "cell", "condition"),
                          np.array([[len(prompts[ci][PROMPT_OF[c]].ids) for c in conditions] for ci in range(len(cells))])[None]),
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
            "prompt": ("condition", [PROMPT_OF[c] for c in conditions]),
            "persona": ("cell", [c.persona for c in cells]),
            "task": ("cell", [c.task for c in cells]),
        },
        attrs=provenance_attrs(loaded, "knockout", {**spec.to_dict(), "grid_definition": grid.to_dict()}),
    )
    ds.attrs["completed"] = int(completed)
    n = spec.n_eval
    ds["kl"].attrs.update(long_name=f"summed KL(reference || knocked out) over {n} tokens", units="nats")
    ds["kl_per_key"].attrs.update(long_name="summed KL per key knocked out", units="nats")
    ds["logp_drop"].attrs.update(long_name=f"log-prob drop of the {n} clean tokens, reference - knocked out", units="nats")
    ds["persona_shift"].attrs.update(long_name="persona shift, log-prob drop / (log p_XY - log p_BY)", units="1")
    ds["persona_shift_per_key"].attrs.update(long_name="persona shift per key knocked out", units="1")
    ds["kl_to_by"].attrs.update(long_name=f"summed KL(BY || knocked out) over {n} tokens (XY prompt only)", units="nats")
    ds["toward_by"].attrs.update(long_name="toward BY, 1 - KL(BY || knocked) / KL(BY || XY)", units="1")
    ds["gap"].attrs.update(long_name=f"log p_XY - log p_BY of the {n} clean tokens", units="nats")
    ds["kl_by_xy"].attrs.update(long_name=f"summed KL(BY || XY) over {n} tokens", units="nats")
    ds["n_keys"].attrs.update(long_name="key positions knocked out")
    ds["key_positions"].attrs.update(long_name="token indices knocked out in the condition's prompt (-1: none)")
    ds["prompt_length"].attrs.update(long_name="tokens in the condition's prompt")
    ds["band"].attrs.update(long_name="decoder blocks START:END")
    ds["prompt"].attrs.update(long_name="prompt the condition runs on (neutral: the filler host)")
    if texts is not None:
        ds["any_marker"].attrs.update(long_name="any own-persona marker in the continuation")
    if scores is not None:
        evidence_scorer.add_scores(ds, scores, dims, prompt_pair="XY against BY")
    return ds


def summary_rows(ds: xr.Dataset, variable: str) -> list[dict]:
    """One row per band: the median over cells of `variable` for each condition (for any_marker,
    the fraction of cells), for the first model of a result."""
    import warnings

    da = ds[variable].isel(model=0) if "model" in ds[variable].dims else ds[variable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a condition without values (e.g. per key of none)
        stat = da.astype(float).mean("cell") if variable == "any_marker" else da.median("cell", skipna=True)
    return [{"band": str(b), **{str(c): float(stat.sel(band=b, condition=c)) for c in ds.condition.values}}
            for b in ds.band.values]
