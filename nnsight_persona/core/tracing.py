"""The few operations experiments run through nnsight traces: greedy continuations and reading
residuals at chosen (row, column) sites of a left-padded batch."""

from __future__ import annotations

import torch

from .batching import Batch
from .edits import LayerWrites
from .errors import RemoteFailure
from .recipes import as_writes, resolve
from .sites import module_at


def knocked_mask(mask, blocked: torch.Tensor, heads, n_heads: int, device=None):
    """A NEW attention mask with `blocked` [rows, q, k] removed (never edit the model's mask in
    place: some families share one mask object across layers), in `heads` only (None: all heads;
    a tuple of heads for every row; or bool [rows, n_heads], per row). Handles the additive float masks
    of eager attention, the boolean masks of sdpa, and sdpa's None (plain causal, built on
    `device`, the queries' device)."""
    rows, q_len, k_len = blocked.shape
    if mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        mask = causal[None, None].expand(rows, 1, q_len, k_len)
    block = blocked[:, None].to(mask.device)
    if heads is not None:  # a tuple (every row) or bool [rows, n_heads] (per row)
        if isinstance(heads, torch.Tensor):
            per_head = heads
        else:
            per_head = torch.zeros(n_heads, dtype=torch.bool)
            per_head[list(heads)] = True
            per_head = per_head[None].expand(rows, n_heads)
        block = block & per_head[:, :, None, None].to(mask.device)
        mask = mask.expand(rows, n_heads, q_len, k_len)
    if mask.dtype == torch.bool:
        return mask & ~block
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


def knock_out(blocks, adapter, knockout, block_index: int, total_len: int | None = None) -> None:
    """Inside a trace: replace the attention kernel's mask argument of one block."""
    attention = getattr(blocks[block_index], adapter.attention)
    kernel = getattr(attention.source, adapter.attention_kernel)
    args, kwargs = kernel.inputs
    if len(args) > 4:
        mask = args[4]
    else:
        mask = kwargs["attention_mask"]
    q_len, k_len = args[1].shape[-2], args[2].shape[-2]
    new = knocked_mask(mask, knockout.blocked(q_len, k_len, block_index, total_len), knockout.heads_at(block_index),
                       args[1].shape[1], args[1].device)
    if len(args) > 4:
        kernel.inputs = ((*args[:4], new, *args[5:]), kwargs)
    else:
        kernel.inputs = (args, {**kwargs, "attention_mask": new})


def apply_edits(blocks, adapter, writes=(), knockout=None, total_len: int | None = None) -> None:
    """Inside a trace: residual writes and attention knockouts, in the order the model runs them
    (the residual at layer L, then block L's attention). Several LayerWrites at one layer apply in
    the order given (a replacement, then additions). `total_len`: positions so far (generation)."""
    knocked = set(knockout.blocks) if knockout is not None else set()
    for layer in sorted({w.layer for w in writes} | knocked):
        for w in (w for w in writes if w.layer == layer):
            site = residual_site(blocks, layer)
            # Edit values are built on the CPU; the site lives where the model does.
            if w.add:
                site[w.rows, w.cols] += w.values.to(site.device, site.dtype)
            else:
                site[w.rows, w.cols] = w.values.to(site.device, site.dtype)
        if layer in knocked:
            knock_out(blocks, adapter, knockout, layer, total_len)


REMOTE_TRIES = 4
REMOTE_BACKOFF_S = 2.0


def retried(fn):
    """Retry a trace sent to NDIF on network and server errors, with exponential backoff
    (2, 4, 8 s); then raise RemoteFailure. Local runs and the local simulation fail at once:
    their errors are deterministic. Each traced function is one request, safe to resend."""
    import functools
    import time

    @functools.wraps(fn)
    def wrapper(loaded, *args, **kwargs):
        if loaded.remote:
            ship_by_value()
        if loaded.remote in (False, "local"):
            return fn(loaded, *args, **kwargs)
        for attempt in range(1, REMOTE_TRIES + 1):
            try:
                return fn(loaded, *args, **kwargs)
            except _remote_errors() as exc:
                if attempt == REMOTE_TRIES:
                    raise RemoteFailure(
                        f"the remote run failed {REMOTE_TRIES} times ({type(exc).__name__}: {exc})"
                    ) from exc
                time.sleep(REMOTE_BACKOFF_S * 2 ** (attempt - 1))

    return wrapper


def ship_by_value() -> None:
    """Have nnsight send this package's functions and classes by value with every request (a server
    has no nnsight_persona), the local simulation's requests included, so that the simulation
    serializes exactly what NDIF receives and rebuilds it from the request alone, never from an
    installed copy of the package. Registered by name: idempotent, and no import of the package."""
    import nnsight

    nnsight.register(__name__.split(".")[0])


def _remote_errors() -> tuple:
    """Errors of the remote path worth a retry: nnsight's RemoteError, network errors, and what a
    connection dropped mid-request looks like (an empty websocket message fails to parse)."""
    from nnsight.intervention.backends.remote import RemoteError

    errors = [RemoteError, ConnectionError, TimeoutError]
    for module, name in (("httpx", "HTTPError"), ("websocket", "WebSocketException"), ("pydantic", "ValidationError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def residual_site(blocks, layer: int):
    """The residual stream at `layer` inside a trace: hidden_states[layer] (input of block `layer`),
    or the last block's raw output for layer == n_layers (see sites.py for the convention)."""
    return blocks[0].input if layer == 0 else blocks[layer - 1].output


def _check_ascending(layers) -> None:
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"layers must be ascending and unique (modules are reached in forward order): {layers}")


@retried
def read_residuals(loaded, batch: Batch, rows: torch.Tensor, cols: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Residuals at sites (rows[k], cols[k]) for each layer, as float32 [len(layers), k, hidden].

    One forward pass over the batch; only the selected sites are saved."""
    _check_ascending(layers)
    blocks = loaded.layers()
    with loaded.lm.trace(**batch.inputs(), remote=loaded.remote):
        picked = []
        for layer in layers:
            picked.append(residual_site(blocks, layer)[rows, cols].float())
        out = torch.stack(picked).save()
    return out.cpu()


@retried
def read_residuals_on_prefix(loaded, batch: Batch, rows: torch.Tensor, cols: torch.Tensor, layers: list[int],
                             prefix: int) -> torch.Tensor:
    """read_residuals, with each distinct prefix of `prefix` columns run once.

    Rows that share their first `prefix` columns (one prompt, different continuations: the capture's
    BB row is the same prompt in every cell) run those columns once, keeping the sites there and the
    KV cache; then every row runs only its last columns on that cache. Local runs only: the cache
    stays next to the model."""
    _check_ascending(layers)
    blocks = loaded.layers()
    owner, firsts = distinct_prefixes(batch, prefix)
    index = torch.tensor(firsts, dtype=torch.long)
    early = cols < prefix
    out = torch.empty(len(layers), len(rows), loaded.hidden_size, dtype=torch.float32)
    with loaded.lm.trace(
        input_ids=batch.input_ids[index, :prefix], attention_mask=batch.attention_mask[index, :prefix],
        position_ids=batch.position_ids[index, :prefix], use_cache=True, logits_to_keep=1,
    ):
        p_rows, p_cols = torch.tensor(owner, dtype=torch.long)[rows[early]], cols[early]
        picked = list().save()
        for layer in layers:
            picked.append(residual_site(blocks, layer)[p_rows, p_cols].float())
        cache = loaded.lm.output.past_key_values.save()
    if bool(early.any()):
        out[:, early] = torch.stack(picked).cpu()
    if bool((~early).any()):
        late = (~early).nonzero().flatten()
        need = sorted({int(r) for r in rows[late]})
        suffix = suffix_batch(batch, need, prefix)
        s_rows = torch.tensor([need.index(int(r)) for r in rows[late]], dtype=torch.long)
        s_cols = cols[late] - prefix
        # The run goes on to the end (nnsight's tracer.stop() would save the blocks above the
        # highest layer read, but each stop keeps some memory alive: a long capture grows), with
        # the unembedding of one column only.
        with loaded.lm.trace(**suffix.inputs(), past_key_values=select_rows(cache, [owner[r] for r in need]),
                             use_cache=True, logits_to_keep=1):
            got = list().save()
            for layer in layers:
                got.append(residual_site(blocks, layer)[s_rows, s_cols].float())
        out[:, late] = torch.stack(got).cpu()
    return out


def greedy_config(loaded, n_tokens: int):
    """Pure greedy decoding for exactly `n_tokens` steps: the checkpoint's own sampling defaults
    (temperature, top-p, repetition penalty...) are deliberately not applied."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
        pad_token_id=loaded.pad_id, eos_token_id=loaded.eos_ids,
    )


@retried
def greedy_continuations(loaded, batch: Batch, n_tokens: int) -> torch.Tensor:
    """`n_tokens` greedy tokens after each row of a left-padded batch. End of turn is suppressed
    until then, so every row has the same length and positions after the prompt stay aligned."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens), remote=loaded.remote) as tracer:
        out = tracer.result.save()
    return out[:, batch.input_ids.shape[1]:].cpu()


@retried
def greedy_continuations_reading(loaded, batch: Batch, n_tokens: int, layers: list[int], rows: torch.Tensor,
                                 cols: torch.Tensor, n_generated: int):
    """greedy_continuations, reading residuals on the way: at `layers`, the prompt sites (rows[k],
    cols[k]) in the first step, and every row's generated token k (its input position) in step
    k + 1, for k < n_generated. Returns (tokens [rows, n_tokens], prompt residuals [len(layers),
    k, hidden], generated residuals [n_generated, len(layers), rows, hidden], float32): the
    capture's rows of the prompt the continuation is generated from, without running it again."""
    _check_ascending(layers)
    if n_generated >= n_tokens:
        raise ValueError(f"reading {n_generated} generated tokens needs more than {n_tokens} steps")
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    blocks = loaded.layers()
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens), remote=loaded.remote) as tracer:
        prompt_sites, generated = list().save(), list().save()
        for step in tracer.iter[0:n_generated + 1]:
            if step == 0:
                prompt_sites.extend([residual_site(blocks, layer)[rows, cols].float() for layer in layers])
            else:
                generated.append(torch.stack([residual_site(blocks, layer)[:, -1].float() for layer in layers]))
        out = tracer.result.save()
    n_rows = batch.input_ids.shape[0]
    prompt = torch.stack(prompt_sites).cpu() if len(rows) else torch.empty(len(layers), 0, loaded.hidden_size)
    after = torch.stack(generated).cpu() if n_generated else torch.empty(0, len(layers), n_rows, loaded.hidden_size)
    return out[:, batch.input_ids.shape[1]:].cpu(), prompt, after


@retried
def generate_with_edit(loaded, batch: Batch, n_tokens: int, edit=None, knockout=None) -> torch.Tensor:
    """Greedy argmax tokens [rows, n_tokens] under an optional GenerationEdit and an optional
    Knockout (held at every step).

    The run always makes n_tokens steps (a bounded nnsight loop needs them all); the tokens
    returned are the raw argmax of each step's logits, so a row's first end-of-turn token marks
    where plain greedy decoding would have stopped (callers cut there)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    blocks = loaded.layers()
    lm_head = module_at(loaded.lm, loaded.adapter.lm_head)
    width = batch.input_ids.shape[1]  # step s attends over width + s positions
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens), remote=loaded.remote) as tracer:
        tokens = list().save()
        for step in tracer.iter[0:n_tokens]:
            apply_edits(blocks, loaded.adapter, _step_writes(edit, step), knockout, width + step)
            tokens.append(lm_head.output[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1).cpu()


def decode_answer(loaded, ids: list[int]) -> str:
    """Text of greedy tokens from generate_with_edit, cut at the first end-of-turn token (where
    plain greedy decoding would have stopped)."""
    for i, token in enumerate(ids):
        if token in loaded.eos_ids:
            ids = ids[:i]
            break
    return loaded.tokenizer.decode(ids, skip_special_tokens=True)


def _step_writes(edit, step: int) -> list:
    """The residual writes a GenerationEdit makes at one generation step."""
    if edit is None or step < edit.step:
        return []
    if step == edit.step:
        return [LayerWrites(edit.layer, edit.rows, edit.cols, edit.values, add=edit.add)]
    if edit.deltas is None:
        return []
    rows = edit.rows if edit.delta_rows is None else edit.delta_rows
    last = torch.full_like(rows, -1)  # later steps feed one new token per row
    return [LayerWrites(edit.layer, rows, last, edit.deltas, add=True)]


@retried
def window_kl(
    loaded, batch: Batch, writes, window_cols: torch.Tensor, reference_rows: torch.Tensor, knockout=None,
    past_key_values=None,
) -> torch.Tensor:
    """KL(reference || row) of next-token distributions, summed over each row's window.

    writes: LayerWrites (one per layer) and knockout: a Knockout, both applied in the same forward
    pass. window_cols [rows, W]: batch columns whose next-token distributions are compared.
    reference_rows [rows]: for each row, the unedited row of the same batch it is compared
    against, read at the same columns (rows whose sequences end in the same continuation tokens
    are right-aligned by left padding). Only the per-row sums leave the trace; logits never do.
    """
    blocks = loaded.layers()
    rows = torch.arange(batch.input_ids.shape[0])[:, None]
    extra = {} if past_key_values is None else {"past_key_values": past_key_values}
    with loaded.lm.trace(**batch.inputs(), **extra, remote=loaded.remote):
        apply_edits(blocks, loaded.adapter, writes, knockout)
        logits = loaded.lm.output.logits  # the model's logits: after Gemma-2's final soft-capping
        logp = logits[rows, window_cols].float().log_softmax(-1)
        # The reference row is read at the same columns: rows of one batch share its padding.
        ref = logits[reference_rows[:, None], window_cols].float().log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).sum(-1).save()
    return kl


@retried
def window_kl_session(loaded, jobs: list[tuple]) -> list[torch.Tensor]:
    """Several window_kl batches in one request: one nnsight session holding a trace per job
    (batch, writes, window_cols, reference_rows, knockout). Remotely that is one round trip, not
    one per batch; the results are the same."""
    blocks = loaded.layers()
    with loaded.lm.session(remote=loaded.remote):
        results = list().save()
        for batch, writes, window_cols, reference_rows, knockout in jobs:
            rows = torch.arange(batch.input_ids.shape[0])[:, None]
            with loaded.lm.trace(**batch.inputs()):
                apply_edits(blocks, loaded.adapter, writes, knockout)
                logits = loaded.lm.output.logits  # after any final soft-capping, as lm_head's output is not
                logp = logits[rows, window_cols].float().log_softmax(-1)
                ref = logits[reference_rows[:, None], window_cols].float().log_softmax(-1)
                results.append((ref.exp() * (ref - logp)).sum(-1).sum(-1).save())
    return list(results)


@retried
def window_kl_native_session(loaded, reads: list, jobs: list[tuple], norms: list = ()) -> tuple[list, list]:
    """window_kl_session whose writes are built on the server (remote-native sweeps; see
    core/recipes.py): one session that first runs the capture passes `reads` (SiteReads), keeping
    what they read there, then a trace per job (batch, recipes, window_cols, reference_rows) whose
    LayerRecipes are resolved from those values and written. Only the KL sums per row come back,
    and the norms of the vectors of `norms` (LayerRecipes resolved, not written). Returns (KLs per
    job, norms per recipe)."""
    blocks = loaded.layers()
    with loaded.lm.session(remote=loaded.remote):
        parts = {}  # layer -> the values each capture pass read there, never saved
        for read in reads:
            with loaded.lm.trace(**read.batch.inputs(), logits_to_keep=1):
                for layer in read.layers:
                    rows, cols = read.at(layer)
                    parts.setdefault(layer, []).append(residual_site(blocks, layer)[rows, cols].float())
        carried = {layer: torch.cat(values) for layer, values in parts.items()}
        sizes = list().save()
        for recipe in norms:
            sizes.append(resolve(recipe, carried).norm(dim=-1))
        results = list().save()
        for batch, recipes, window_cols, reference_rows in jobs:
            writes = [as_writes(recipe, carried) for recipe in recipes]
            rows = torch.arange(batch.input_ids.shape[0])[:, None]
            with loaded.lm.trace(**batch.inputs()):
                apply_edits(blocks, loaded.adapter, writes)
                logits = loaded.lm.output.logits  # after any final soft-capping, as lm_head's output is not
                logp = logits[rows, window_cols].float().log_softmax(-1)
                ref = logits[reference_rows[:, None], window_cols].float().log_softmax(-1)
                results.append((ref.exp() * (ref - logp)).sum(-1).sum(-1).save())
    return [r.cpu() for r in results], [s.cpu() for s in sizes]


def window_scores(logp: torch.Tensor, own_rows: torch.Tensor, baseline_rows: torch.Tensor, targets: torch.Tensor):
    """Per-row sums over a window of next-token log-probs `logp` [rows, W, vocab] of one batch:
    [rows, 3] = KL(row own_rows[r] || row r), KL(row baseline_rows[r] || row r), and the
    log-prob row r gives the teacher-forced `targets` [rows, W]. Reference rows are read at the
    same window columns (sequences ending in the same tokens are right-aligned by left padding)."""
    own, base = logp[own_rows.to(logp.device)], logp[baseline_rows.to(logp.device)]
    kl_own = (own.exp() * (own - logp)).sum(-1).sum(-1)
    kl_base = (base.exp() * (base - logp)).sum(-1).sum(-1)
    target = logp.gather(-1, targets.to(logp.device)[..., None]).squeeze(-1).sum(-1)
    return torch.stack([kl_own, kl_base, target], dim=-1)


@retried
def window_scores_session(loaded, jobs: list[tuple]) -> list[torch.Tensor]:
    """window_scores for several batches in one request (one nnsight session); each job is
    (batch, writes, window_cols, own_rows, knockout, baseline_rows, targets). Returns [rows, 3]
    per job (see window_scores)."""
    blocks = loaded.layers()
    with loaded.lm.session(remote=loaded.remote):
        results = list().save()
        for batch, writes, window_cols, own_rows, knockout, baseline_rows, targets in jobs:
            rows = torch.arange(batch.input_ids.shape[0])[:, None]
            with loaded.lm.trace(**batch.inputs()):
                apply_edits(blocks, loaded.adapter, writes, knockout)
                # The model's logits: after Gemma-2's final soft-capping, which lm_head's output is not.
                logp = loaded.lm.output.logits[rows, window_cols].float().log_softmax(-1)
                results.append(window_scores(logp, own_rows, baseline_rows, targets).save())
    return [r.cpu() for r in results]


def kl_in_sessions(loaded, chunks: list, make_job, per_request: int, desc: str, progress: bool,
                   reuse_prefix: bool = False):
    """For each chunk of rows, in order: (chunk, KL values of its non-reference rows). `make_job`
    turns a chunk into ((batch, writes, window_cols, reference_rows, knockout), n_reference_rows);
    `per_request` chunks travel together in one session (one remote round trip). With
    `reuse_prefix`, a local run takes each batch's columns before its window from one clean pass
    per distinct prefix where no edit reaches them (window_kl_on_prefix)."""
    from .progress import tqdm

    local_prefixes = reuse_prefix and not loaded.remote
    per_request = 1 if local_prefixes else max(1, per_request)  # a local batch is yielded when it is done
    with tqdm(total=len(chunks), desc=desc, disable=not progress) as bar:
        for start in range(0, len(chunks), per_request):
            group = chunks[start : start + per_request]
            jobs = [make_job(chunk) for chunk in group]
            if local_prefixes:
                results = [window_kl_on_prefix(loaded, *job) for job, _ in jobs]
            else:
                results = window_kl_session(loaded, [job for job, _ in jobs])
            for chunk, (_, n_reference), got in zip(group, jobs, results):
                yield chunk, got[n_reference:].tolist()
                bar.update()


def select_rows(cache, rows: list[int]):
    """A cache holding the given batch rows (repeats allowed), for a suffix batch. Only the
    selected rows are copied (a deep copy of the whole cache first would double its memory); the
    cache passed in is left as it was."""
    import copy

    index = torch.tensor(rows, dtype=torch.long)
    picked = copy.copy(cache)
    picked.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in picked.layers:
        layer.batch_select_indices(index)  # rebinds this copy's keys/values to indexed tensors
    return picked


def clean_pass(loaded, batch: Batch, layers: list[int], prefixes: list[int]):
    """The unedited batch run once, in pieces split at `prefixes`: the KV cache of each prefix
    ({prefix: cache}, each its own copy), the clean residuals at `layers` for the columns from the
    first prefix on ([len(layers), rows, cols, hidden], model dtype) and the clean next-token
    log-probabilities of those columns ([rows, cols, vocab], float32). The pieces together cost
    one pass over the batch. (Caches are cut by running, not by slicing a whole-sequence cache:
    a sliding-window layer keeps only its last keys, so a slice would be wrong there.)"""
    prefixes = sorted(set(prefixes))
    width = batch.input_ids.shape[1]
    every_row = list(range(batch.input_ids.shape[0]))
    caches, resid, logp, cache, start = {}, [], [], None, 0
    for end in prefixes + ([width] if prefixes[-1] < width else []):
        read = start >= prefixes[0]
        cache, r, lp = _extend(loaded, batch, start, end, cache, layers if read else [], read)
        if read:
            resid.append(r)
            logp.append(lp)
        if end in prefixes:
            caches[end] = select_rows(cache, every_row)
        start = end
    return caches, torch.cat(resid, dim=2), torch.cat(logp, dim=1)


@retried
def _extend(loaded, batch: Batch, start: int, end: int, cache, layers: list[int], read: bool):
    """Run columns [start, end) on `cache` (that of the first `start` columns, extended in place);
    with `read`, the residuals at `layers` and the log-probabilities of these columns."""
    blocks = loaded.layers()
    extra = {} if cache is None else {"past_key_values": cache}
    with loaded.lm.trace(
        input_ids=batch.input_ids[:, start:end], attention_mask=batch.attention_mask[:, :end],
        position_ids=batch.position_ids[:, start:end], use_cache=True, **extra,
    ):
        picked = list().save()
        for layer in layers:
            picked.append(residual_site(blocks, layer).clone())
        output = loaded.lm.output
        if read:  # the model's logits: after Gemma-2's final soft-capping, which lm_head's output is not
            logp = output.logits.float().log_softmax(-1).save()
        cache = output.past_key_values.save()
    if not read:
        return cache, None, None
    return cache, torch.stack([h.cpu() for h in picked]) if layers else None, logp.cpu()


@retried
def window_kl_against(
    loaded, batch: Batch, window_cols: torch.Tensor, reference_logp: torch.Tensor, past_key_values,
    writes=(), layer: int = 0, residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(reference || row) summed over each row's window, against given reference
    log-probabilities [rows, W, vocab] (the clean run's, from `clean_pass`), so no unedited row
    rides along in the batch. Edits: `writes` (LayerWrites), or, with `layer` >= 1, a start from
    that layer: the decoder blocks below it are not run at all (an edit at layer L changes nothing
    below it) and `residual` [rows, cols, hidden] (the clean residual with each row's patch
    written in) is what block `layer` reads. Every row attends to `past_key_values`."""
    blocks = loaded.layers()
    rows = torch.arange(batch.input_ids.shape[0])[:, None]
    device = next(loaded.lm._module.parameters()).device  # a local path: the weights are here
    value = residual.to(device, loaded.torch_dtype) if layer >= 1 else None
    ref = reference_logp.to(device)
    with loaded.lm.trace(**batch.inputs(), past_key_values=past_key_values, remote=loaded.remote):
        if layer >= 1:
            # Only the last skipped block's output is read (by block `layer`); the others' are unused.
            for below in range(layer):
                blocks[below].skip(value)
        else:
            apply_edits(blocks, loaded.adapter, writes)
        # The model's logits: after Gemma-2's final soft-capping, which lm_head's output is not.
        logp = loaded.lm.output.logits[rows, window_cols].float().log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).sum(-1).save()
    return kl.cpu()


def suffix_batch(batch: Batch, rows: list[int], prefix: int) -> Batch:
    """The columns from `prefix` on of the chosen rows, with the full attention mask (the cached
    prefix included) and the positions the whole sequences give them."""
    index = torch.tensor(rows, dtype=torch.long)
    return Batch(
        input_ids=batch.input_ids[index, prefix:],
        attention_mask=batch.attention_mask[index],
        position_ids=batch.position_ids[index, prefix:],
        pad=batch.pad[index],
    )


# --- whole-sequence scoring with each distinct prefix run once ---------------------------------
# Inject patches at p_last and later, and knockout blocks queries from p_last on: every column
# before the scored window is then the same as in the unedited run of the row's prompt. Rows that
# share a prompt (one prompt, many edits) run that prefix once, and each row runs only the window.
# Local runs only: the caches stay next to the model (remote runs send whole sequences).

def shared_prefix(batch: Batch, window_cols: torch.Tensor, writes=(), knockout=None) -> int | None:
    """The number of columns before the window that the batch's rows can take from a clean
    prefix cache: None where the window is not the last columns of every row, or where some edit
    touches a column before it (a write there, or a knocked-out query)."""
    rows, width = batch.input_ids.shape
    n = window_cols.shape[1]
    prefix = width - n
    if prefix <= 0 or not torch.equal(window_cols, torch.arange(prefix, width).expand(rows, n)):
        return None
    if any(len(w.cols) and int(w.cols.min()) < prefix for w in writes):
        return None
    if knockout is not None and bool(knockout.queries[:, :prefix].any()):
        return None
    return prefix


def distinct_prefixes(batch: Batch, prefix: int) -> tuple[list[int], list[int]]:
    """(owner, firsts): each row's index among the distinct prefixes (token ids and mask of the
    first `prefix` columns), and the first row holding each distinct prefix."""
    owner, distinct, firsts = [], {}, []
    for r in range(batch.input_ids.shape[0]):
        key = (batch.input_ids[r, :prefix].numpy().tobytes(), batch.attention_mask[r, :prefix].numpy().tobytes())
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(r)
        owner.append(distinct[key])
    return owner, firsts


def prefix_cache(loaded, batch: Batch, prefix: int):
    """The KV cache of the first `prefix` columns, one row per batch row, each distinct prefix
    (token ids and mask) run once; and how many distinct prefixes there were."""
    owner, firsts = distinct_prefixes(batch, prefix)
    index = torch.tensor(firsts, dtype=torch.long)
    with loaded.lm.trace(
        input_ids=batch.input_ids[index, :prefix], attention_mask=batch.attention_mask[index, :prefix],
        position_ids=batch.position_ids[index, :prefix], use_cache=True, logits_to_keep=1,
    ):
        cache = loaded.lm.output.past_key_values.save()
    return select_rows(cache, owner), len(firsts)


def _on_prefix(loaded, batch: Batch, prefix: int, writes, knockout, score):
    """Run the batch's window columns on the prefix cache with the edits moved to those columns;
    `score(logp)` turns the window's log-probs [rows, W, vocab] (the model's logits, after any
    final soft-capping) into what leaves the trace."""
    cache, _ = prefix_cache(loaded, batch, prefix)
    suffix = suffix_batch(batch, list(range(batch.input_ids.shape[0])), prefix)
    shifted = [LayerWrites(w.layer, w.rows, w.cols - prefix, w.values, w.add) for w in writes]
    with loaded.lm.trace(**suffix.inputs(), past_key_values=cache):
        apply_edits(loaded.layers(), loaded.adapter, shifted, knockout, total_len=batch.input_ids.shape[1])
        out = score(loaded.lm.output.logits.float().log_softmax(-1)).save()
    return out.cpu()


def window_kl_on_prefix(loaded, batch: Batch, writes, window_cols, reference_rows, knockout=None) -> torch.Tensor:
    """window_kl with each distinct prefix run once (see shared_prefix), or on the whole
    sequences where an edit reaches before the window."""
    prefix = shared_prefix(batch, window_cols, writes, knockout)
    if prefix is None:
        return window_kl(loaded, batch, writes, window_cols, reference_rows, knockout)

    def kl(logp):
        ref = logp[reference_rows]
        return (ref.exp() * (ref - logp)).sum(-1).sum(-1)

    return _on_prefix(loaded, batch, prefix, writes, knockout, kl)


def window_scores_on_prefix(loaded, batch: Batch, writes, window_cols, own_rows, knockout, baseline_rows, targets):
    """window_scores (KL to own, KL to baseline, target log-prob; see there) with each distinct
    prefix run once, or on the whole sequences where an edit reaches before the window."""
    prefix = shared_prefix(batch, window_cols, writes, knockout)
    if prefix is None:
        return window_scores_session(loaded, [(batch, writes, window_cols, own_rows, knockout, baseline_rows, targets)])[0]
    return _on_prefix(loaded, batch, prefix, writes, knockout,
                      lambda logp: window_scores(logp, own_rows, baseline_rows, targets))


@retried
def last_logprobs(loaded, batch: Batch, token_ids: list[int]) -> torch.Tensor:
    """Log-probabilities [rows, len(token_ids)] of the given tokens as the next token after each
    row of a left-padded batch (the last column). Only those values leave the trace."""
    index = torch.tensor(token_ids, dtype=torch.long)
    with loaded.lm.trace(**batch.inputs(), remote=loaded.remote):
        logp = loaded.lm.output.logits[:, -1].float().log_softmax(-1)[:, index].save()
    return logp.cpu()
