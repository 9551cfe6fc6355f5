"""Requests sent to NDIF (or its local simulation) and bytes moved, counted per run."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Traffic:
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_attrs(self) -> dict:
        return {
            "remote_requests": self.requests,
            "remote_bytes_sent": self.bytes_sent,
            "remote_bytes_received": self.bytes_received,
        }


@contextmanager
def metered():
    """Count, while the block runs, every request nnsight serializes for a remote backend (NDIF or
    its local simulation) and the result bytes NDIF sends back (the simulation downloads nothing)."""
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.schema.request import RequestModel

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

    RequestModel.serialize = classmethod(counting_serialize)
    RemoteBackend.finalize = counting_finalize
    try:
        yield traffic
    finally:
        RequestModel.serialize = serialize
        RemoteBackend.finalize = finalize
