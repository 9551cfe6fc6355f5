"""The cost of a run before it runs: requests, bytes each way, token-layer-forwards and the
largest batch's activation memory, counted by running the experiment's own code with every trace
replaced by an accountant.

The experiments' `run()` functions build their batches (chunking, length ordering, left padding,
sessions of several batches) and call the trace functions of `tracing`. A dry run calls the same
`run()` on a stand-in model (config and tokenizer only, no weights) while `dry_traces` puts an
`Accountant` method in place of each trace function: it records what that trace would cost and
returns zeros of the shapes the trace returns. Plan and run therefore share every batching
decision; only the per-trace costs below are a model:

- token-layer-forwards: rows x columns x decoder blocks of every forward pass (padding included),
  as `traffic.forwards_counted` measures them: a generation of n tokens is the prompt plus n - 1
  one-token steps; a pass that skips the blocks below layer L runs n_layers - L blocks; a pass on
  distinct prefixes runs each distinct prefix once, then the rows' suffixes.
- bytes up: the tensors a request carries (token ids, masks, positions, edits, windows), plus the
  fixed part of a request (the block's source, the package helpers it calls, pickling), measured.
- bytes down: the values the block saves, plus torch.save's overhead, measured.

A stand-in model may be thin (`hidden_size` 1): vectors then cost nothing to compute, and the
accountant counts every hidden-size tensor at the real width (`hidden_size` of the Accountant).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# The fixed bytes of one request beyond the tensors it carries (the block's source, the package's
# functions and classes it uses, sent by value as a server without the package needs them, the
# tracer), per trace function, plus the pickling of each tensor it carries; and torch.save's bytes
# around the values a block saves. Measured on the tiny gemma2 test model through nnsight 0.8.1's
# local simulation with the package registered for by-value pickling, as every remote run has it
# (tracing.ship_by_value; a request's bytes minus its tensors' bytes, over requests of 4 to 111
# tensors); tests/test_plan.py checks them on other families, tests/test_ndif.py on a real server.
REQUEST_BYTES = {
    "read_residuals": 11_300,
    "greedy_continuations": 15_300,
    "greedy_continuations_reading": 16_100,
    "generate_with_edit": 44_600,
    "window_kl_session": 35_000,
    "window_kl_native_session": 46_900,
    "window_scores_session": 39_000,
    "_answer_sums": 24_000,
}
TENSOR_UP_BYTES = 306
RESULT_BYTES = 1_380
SAVED_TENSOR_BYTES = 200

# Fields of the edit records that hold hidden-size vectors (counted at the real width).
_HIDDEN_FIELDS = {"values", "deltas"}


@dataclass
class Cost:
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    token_layer_forwards: int = 0
    passes: int = 0  # forward passes (a generation counts once)
    peak_rows: int = 0  # the batch with the largest activation memory: rows,
    peak_width: int = 0  # columns,
    peak_activation_bytes: int = 0  # and its estimated peak activation memory (core/memory.py)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Accountant:
    """Stands in for the trace functions of `tracing` (same names and arguments): records what
    each would cost in `cost`, returns zeros of the shapes it returns. `remote`: whether traces
    are requests (NDIF, or its local simulation). `row_bytes(width)`: the activation memory one
    row of `width` columns adds to a pass (core/memory.row_bytes)."""

    def __init__(self, n_layers: int, hidden_size: int, remote: bool, row_bytes, dry_hidden: int = 1):
        self.n_layers, self.hidden, self.remote = n_layers, hidden_size, bool(remote)
        self.row_bytes, self.dry_hidden = row_bytes, dry_hidden
        self.cost = Cost()

    # --- what every trace costs ----------------------------------------------------------------

    def _pass(self, rows: int, width: int, blocks: int | None = None) -> None:
        """One forward pass of `rows` x `width` tokens through `blocks` decoder blocks (all)."""
        self.cost.token_layer_forwards += rows * width * (self.n_layers if blocks is None else blocks)
        memory = rows * self.row_bytes(width)
        if memory > self.cost.peak_activation_bytes:
            self.cost.peak_activation_bytes, self.cost.peak_rows, self.cost.peak_width = memory, rows, width

    def _generation(self, rows: int, width: int, n_tokens: int) -> None:
        """n_tokens greedy steps: the prompt, then n_tokens - 1 one-token steps on the cache."""
        self._pass(rows, width)
        self.cost.token_layer_forwards += rows * (n_tokens - 1) * self.n_layers
        self.cost.passes += 1

    def _request(self, name: str, carried, saved) -> None:
        """One request carrying the tensors in `carried` and saving `saved`: a list of (shape,
        bytes per element) of the values the block saves."""
        if not self.remote:
            return
        self.cost.requests += 1
        n_tensors, up = _tensor_bytes(carried, self.hidden, self.dry_hidden)
        self.cost.bytes_up += REQUEST_BYTES[name] + up + TENSOR_UP_BYTES * n_tensors
        self.cost.bytes_down += RESULT_BYTES + sum(
            SAVED_TENSOR_BYTES + _numel(shape) * size for shape, size in saved)

    def _local(self, name: str) -> None:
        """A trace that only local runs make (caches stay next to the model)."""
        if self.remote:
            raise RuntimeError(f"{name} runs only locally, but the plan is of a remote run")

    # --- the trace functions -------------------------------------------------------------------

    def read_residuals(self, loaded, batch, rows, cols, layers):
        n_rows, width = batch.input_ids.shape
        self._pass(n_rows, width)
        self.cost.passes += 1
        self._request("read_residuals", [batch.inputs(), rows, cols], [((len(layers), len(rows), self.hidden), 4)])
        return torch.zeros(len(layers), len(rows), loaded.hidden_size)

    def read_residuals_on_prefix(self, loaded, batch, rows, cols, layers, prefix):
        from .tracing import distinct_prefixes

        self._local("read_residuals_on_prefix")
        width = batch.input_ids.shape[1]
        _, firsts = distinct_prefixes(batch, prefix)
        self._pass(len(firsts), prefix)
        self.cost.passes += 1
        late = {int(r) for r in rows[cols >= prefix]}
        if late:
            self._pass(len(late), width - prefix)
            self.cost.passes += 1
        return torch.zeros(len(layers), len(rows), loaded.hidden_size)

    def greedy_continuations(self, loaded, batch, n_tokens):
        n_rows, width = batch.input_ids.shape
        self._generation(n_rows, width, n_tokens)
        self._request("greedy_continuations", [batch.input_ids, batch.attention_mask],
                      [((n_rows, width + n_tokens), 8)])
        return torch.zeros(n_rows, n_tokens, dtype=torch.long)

    def greedy_continuations_reading(self, loaded, batch, n_tokens, layers, rows, cols, n_generated):
        n_rows, width = batch.input_ids.shape
        self._generation(n_rows, width, n_tokens)
        saved = [((n_rows, width + n_tokens), 8)]
        saved += [((len(rows), self.hidden), 4)] * (len(layers) if len(rows) else 0)
        saved += [((len(layers), n_rows, self.hidden), 4)] * n_generated
        self._request("greedy_continuations_reading", [batch.input_ids, batch.attention_mask, rows, cols], saved)
        return (torch.zeros(n_rows, n_tokens, dtype=torch.long), torch.zeros(len(layers), len(rows), loaded.hidden_size),
                torch.zeros(n_generated, len(layers), n_rows, loaded.hidden_size))

    def generate_with_edit(self, loaded, batch, n_tokens, edit=None, knockout=None):
        n_rows, width = batch.input_ids.shape
        self._generation(n_rows, width, n_tokens)
        self._request("generate_with_edit", [batch.input_ids, batch.attention_mask, edit, knockout],
                      [((n_rows,), 8)] * n_tokens)
        return torch.zeros(n_rows, n_tokens, dtype=torch.long)

    def window_kl(self, loaded, batch, writes, window_cols, reference_rows, knockout=None, past_key_values=None):
        n_rows, width = batch.input_ids.shape
        self._pass(n_rows, width)
        self.cost.passes += 1
        # Only local runs send a lone window_kl (remote ones send sessions): priced as a session of one.
        self._request("window_kl_session", [batch.inputs(), writes, window_cols, reference_rows, knockout],
                      [((n_rows,), 4)])
        return torch.zeros(n_rows)

    def window_kl_session(self, loaded, jobs):
        for batch, *_ in jobs:
            self._pass(*batch.input_ids.shape)
            self.cost.passes += 1
        self._request("window_kl_session", [jobs], [((job[0].input_ids.shape[0],), 4) for job in jobs])
        return [torch.zeros(job[0].input_ids.shape[0]) for job in jobs]

    def window_kl_native_session(self, loaded, reads, jobs, norms=()):
        for read in list(reads) + [job[0] for job in jobs]:
            batch = getattr(read, "batch", read)
            self._pass(*batch.input_ids.shape)
            self.cost.passes += 1
        saved = [((job[0].input_ids.shape[0],), 4) for job in jobs] + [((r.table.shape[0],), 4) for r in norms]
        self._request("window_kl_native_session", [reads, jobs, norms], saved)
        return [torch.zeros(job[0].input_ids.shape[0]) for job in jobs], [torch.zeros(r.table.shape[0]) for r in norms]

    def window_scores_session(self, loaded, jobs):
        for batch, *_ in jobs:
            self._pass(*batch.input_ids.shape)
            self.cost.passes += 1
        self._request("window_scores_session", [jobs], [((job[0].input_ids.shape[0], 3), 4) for job in jobs])
        return [torch.zeros(job[0].input_ids.shape[0], 3) for job in jobs]

    def _on_prefix(self, batch, prefix: int) -> None:
        from .tracing import distinct_prefixes

        n_rows, width = batch.input_ids.shape
        _, firsts = distinct_prefixes(batch, prefix)
        self._pass(len(firsts), prefix)
        self._pass(n_rows, width - prefix)
        self.cost.passes += 2

    def window_kl_on_prefix(self, loaded, batch, writes, window_cols, reference_rows, knockout=None):
        from .tracing import shared_prefix

        self._local("window_kl_on_prefix")
        prefix = shared_prefix(batch, window_cols, writes, knockout)
        if prefix is None:
            return self.window_kl(loaded, batch, writes, window_cols, reference_rows, knockout)
        self._on_prefix(batch, prefix)
        return torch.zeros(batch.input_ids.shape[0])

    def window_scores_on_prefix(self, loaded, batch, writes, window_cols, own_rows, knockout, baseline_rows, targets):
        from .tracing import shared_prefix

        self._local("window_scores_on_prefix")
        prefix = shared_prefix(batch, window_cols, writes, knockout)
        if prefix is None:
            job = (batch, writes, window_cols, own_rows, knockout, baseline_rows, targets)
            return self.window_scores_session(loaded, [job])[0]
        self._on_prefix(batch, prefix)
        return torch.zeros(batch.input_ids.shape[0], 3)

    def clean_pass(self, loaded, batch, layers, prefixes):
        self._local("clean_pass")
        n_rows, width = batch.input_ids.shape
        first = min(prefixes)
        for start, end in zip([0] + sorted(set(prefixes)), sorted(set(prefixes)) + [width]):
            if end > start:
                self._pass(n_rows, end - start)
                self.cost.passes += 1
        caches = {p: None for p in prefixes}
        # The log-probs' vocabulary is thin too: the plan reads their shape, never their values.
        return (caches, torch.zeros(len(layers), n_rows, width - first, loaded.hidden_size, dtype=loaded.torch_dtype),
                torch.zeros(n_rows, width - first, 1))

    def select_rows(self, cache, rows):
        return cache

    def window_kl_against(self, loaded, batch, window_cols, reference_logp, past_key_values, writes=(), layer=0,
                          residual=None):
        self._local("window_kl_against")
        n_rows, width = batch.input_ids.shape
        self._pass(n_rows, width, self.n_layers - layer if layer >= 1 else None)
        self.cost.passes += 1
        return torch.zeros(n_rows)


    # --- core/evidence.py's scoring of generated answers (markers, knockout) -------------------
    # Answers are what generation returned, cut at the first end-of-turn token: the stand-in's
    # zeros never end early, so a plan prices every answer at its full length (an upper bound).

    def _answer_sums(self, loaded, batch, tail, cols, targets, weights):
        n_rows, width = batch.input_ids.shape
        self._pass(n_rows, width)
        self.cost.passes += 1
        self._request("_answer_sums", [batch.inputs(), cols, targets, weights], [((2, n_rows // 2), 4)])
        return torch.zeros(2, n_rows // 2)

    def _answer_sums_on_prefix(self, loaded, batch, prefix, cols, targets, weights):
        self._local("_answer_sums_on_prefix")
        self._on_prefix(batch, prefix)
        return torch.zeros(2, batch.input_ids.shape[0] // 2)

TRACES = ("read_residuals", "read_residuals_on_prefix", "greedy_continuations", "greedy_continuations_reading",
          "generate_with_edit", "window_kl", "window_kl_session", "window_kl_native_session", "window_scores_session", "window_kl_on_prefix",
          "window_scores_on_prefix", "clean_pass", "select_rows", "window_kl_against", "_answer_sums",
          "_answer_sums_on_prefix")


@contextmanager
def dry_traces(accountant: Accountant, modules):
    """While the block runs, every trace function named in TRACES is the accountant's method, in
    `tracing` and `evidence` themselves (for the helpers that call them, such as `kl_in_sessions`)
    and in each of `modules` that imported it by name."""
    from . import evidence, tracing

    replaced = []
    for module in [tracing, evidence, *modules]:
        for name in TRACES:
            if hasattr(module, name):
                replaced.append((module, name, getattr(module, name)))
                setattr(module, name, getattr(accountant, name))
    try:
        yield accountant
    finally:
        for module, name, original in reversed(replaced):
            setattr(module, name, original)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _tensor_bytes(obj, hidden: int, dry_hidden: int) -> tuple[int, int]:
    """(tensors, bytes) of the tensors reachable from `obj` (lists, tuples, dicts, dataclasses),
    each counted once; the hidden-size fields of edit records at the real width `hidden`."""
    seen: set[int] = set()
    count = [0, 0]

    def walk(value, widen: bool = False):
        if value is None or id(value) in seen:
            return
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
            n = value.numel()
            if widen and value.dim() and value.shape[-1] == dry_hidden:
                n = n // dry_hidden * hidden
            count[0] += 1
            count[1] += n * value.element_size()
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            seen.add(id(value))
            for item in value.values():
                walk(item)
        elif dataclasses.is_dataclass(value):
            seen.add(id(value))
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), field.name in _HIDDEN_FIELDS)

    walk(obj)
    return count[0], count[1]
