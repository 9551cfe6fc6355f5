"""CLI runs in separate processes, for tests that kill them or run two at once.

Children are forked from a fork server that has imported the package but never run torch, so they
start in a fraction of a second and inherit no thread pools (forking a process that has run
OpenMP code can hang the child). Each child loads its model, says it is ready through a pipe, then
runs the command exactly as `nnsight-persona ARGS` would, and exits with the command's status.
"""

from __future__ import annotations

import multiprocessing
import os

_CONTEXT = None
# What a child needs, imported once in the fork server (transformers imports much of it lazily
# when the first model loads).
PRELOAD = [
    "torch", "xarray", "nnsight", "nnsight.modeling.transformers", "transformers.modeling_utils",
    "transformers.image_processing_utils", "transformers.activations", "transformers.utils.type_validators",
    "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama",
    "nnsight_persona.models", "nnsight_persona.studies.xu2026.substitute", "nnsight_persona.cli", "cli_child",
]


def context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # Imports only: nothing here runs torch code, so no thread pool exists yet when children fork.
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def run_cli(args, model, ready, checkpoint_every_batch=False, block_in_window_kl=False):
    """The child's body: `nnsight-persona ARGS` with `model` preloaded; `ready` (a pipe's end) gets
    a message when the command starts. checkpoint_every_batch: write the partial result after every
    batch (not every minute), so writes happen all the time; block_in_window_kl: stop inside the
    first substitution batch (after saying ready) until killed."""
    import threading
    import time

    import torch
    import tqdm

    torch.set_num_threads(1)
    # tqdm's default lock is a named semaphore, which a SIGKILLed child could not give back.
    tqdm.tqdm.set_lock(threading.RLock())
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    from nnsight_persona.models import loading as models
    from nnsight_persona.storage import store
    from nnsight_persona.cli import main

    loaded = models.load_model(model)
    models.load_model = lambda *a, **k: loaded
    if checkpoint_every_batch:
        class EveryBatch(store.Checkpoint):
            def __init__(self, path, every_s=60.0):
                super().__init__(path, every_s=0.0)

        store.Checkpoint = EveryBatch
    if block_in_window_kl:
        from nnsight_persona.studies.xu2026 import substitute

        def hang(*a, **k):
            ready.send("ready")
            time.sleep(3600)

        substitute.window_kl_against = hang
    else:
        ready.send("ready")
    main.main(args=[str(a) for a in args], prog_name="nnsight-persona")  # exits with the command's status


class Child:
    """A started child: `wait_ready(timeout)`, then the multiprocessing Process as `process`."""

    def __init__(self, args, model="toy", **options):
        ctx = context()
        self._ready, ready = ctx.Pipe(duplex=False)  # a pipe, not an Event: a killed child leaks nothing
        self.process = ctx.Process(target=run_cli, args=(list(map(str, args)), model, ready), kwargs=options,
                                   daemon=True)
        self.process.start()
        ready.close()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.poll(timeout)

    @property
    def pid(self) -> int:
        return self.process.pid


def start(args, model="toy", **options) -> Child:
    """Start `nnsight-persona ARGS` in a child process."""
    return Child(args, model, **options)
