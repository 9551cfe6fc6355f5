"""Requests sent to NDIF (or its local simulation) and bytes moved, counted per run."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Traffic:
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    token_layer_forwards: int = 0  # token positions x decoder blocks run (padding included)

    def as_attrs(self) -> dict:
        return {
            "remote_requests": self.requests,
            "remote_bytes_sent": self.bytes_sent,
            "remote_bytes_received": self.bytes_received,
        }


@contextmanager
def forwards_counted(attentions, traffic: Traffic):
    """Add to `traffic.token_layer_forwards`, while the `with` block runs, the token positions
    every decoder block runs: rows x columns of each call of its attention module (`attentions`,
    torch modules, one per block), so a block skipped whole (its forward not run) counts nothing.
    Needs the modules here: local runs and the local simulation."""
    def count(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        traffic.token_layer_forwards += int(hidden.shape[:-1].numel())

    handles = []
    try:
        for attention in attentions:
            handles.append(attention.register_forward_hook(count, with_kwargs=True))
        yield traffic
    finally:
        for handle in handles:
            handle.remove()


def result_bytes(saved: dict) -> int:
    """Bytes of a result as a server sends it back: the saved values, torch-serialized (what
    nnsight's RemoteBackend loads with torch.load; uncompressed, as the simulation's requests are)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return buffer.getbuffer().nbytes


@contextmanager
def metered():
    """Count, while the block runs, every request nnsight serializes for a remote backend (NDIF or
    its local simulation) and the result bytes sent back: those NDIF sends, and for the local
    simulation, which downloads nothing, the serialized size of the values the block saved (what a
    server would send)."""
    from nnsight.intervention.backends.local import LocalSimulationBackend
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.tracer import _saves

    traffic = Traffic()
    serialize = RequestModel.__dict__["serialize"]  # a classmethod: every request passes through it
    finalize = RemoteBackend.finalize  # receives the downloaded result bytes

    def counting_serialize(cls, *args, **kwargs):
        blob = serialize.__func__(cls, *args, **kwargs)
        traffic.requests += 1
        traffic.bytes_sent += len(blob)
        return blob

    def counting_finalize(self, content):
        traffic.bytes_received += len(content)
        return finalize(self, content)

    def counting_simulation(self, tracer):
        simulate(self, tracer)
        # The block's results are in the caller's frame now; the values the block saved are those a
        # server would have sent (the saved set is cleared only when the outermost trace exits).
        saves = _saves()
        frame = tracer.info.frame
        saved = {name: value for name, value in frame.f_locals.items() if id(value) in saves}
        traffic.bytes_received += result_bytes(saved)

    simulate = LocalSimulationBackend.__call__
    RequestModel.serialize = classmethod(counting_serialize)
    RemoteBackend.finalize = counting_finalize
    LocalSimulationBackend.__call__ = counting_simulation
    try:
        yield traffic
    finally:
        RequestModel.serialize = serialize
        RemoteBackend.finalize = finalize
        LocalSimulationBackend.__call__ = simulate


def attention_modules(loaded) -> list:
    """Each decoder block's attention module of a model that runs here (local runs and the local
    simulation); none for a model on a server (its weights are not here)."""
    from .sites import module_at

    if loaded.remote not in (False, "local"):
        return []
    return [getattr(block, loaded.adapter.attention) for block in module_at(loaded.lm._module, loaded.adapter.layers)]
