"""Process-wide torch settings the toy's trainer and evaluation need, set for their duration only.

`torch.set_num_threads` and `torch.manual_seed` are global: left changed, they change the
rounding (a matmul's reduction is split by thread) and the random draws of whatever runs next in
the same process, a notebook or a test session. So they are set here and restored on the way out."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_settings(threads: int, seed: int | None = None):
    """`threads` CPU threads (and, with `seed`, a seeded global RNG) inside the block; the caller's
    thread count and RNG state afterwards, however the block ends."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if seed is None:
            yield
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
    finally:
        torch.set_num_threads(before)
