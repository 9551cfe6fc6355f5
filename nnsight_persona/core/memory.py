"""Memory-aware batch sizes: how many rows fit in a forward pass on this device.

The estimate per row covers what a forward pass holds at its peak without gradients: the logits
(in the model's dtype, plus a float32 copy for log-softmax), the KV cache, one block's MLP and
attention activations, and eager attention's weights. Half the free memory is budgeted, so the
estimate's slack and the allocator's fragmentation have room.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def row_bytes(config, dtype: str, seq_len: int) -> int:
    """Estimated peak bytes one row of `seq_len` tokens adds to a forward pass."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    b = BYTES[dtype]
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    logits = seq_len * text.vocab_size * (b + 4)
    kv_cache = 2 * text.num_hidden_layers * seq_len * kv_heads * head_dim * b
    activations = seq_len * (3 * text.intermediate_size + 4 * text.hidden_size) * b
    attention = heads * seq_len * seq_len * 4
    return logits + kv_cache + activations + attention


def free_bytes(device) -> int:
    """Free memory on `device`: the CUDA allocator's view, or MemAvailable for the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30  # no /proc: assume a modest machine


def auto_batch_size(config, dtype: str, seq_len: int, free: int, fraction: float = 0.5, cap: int = 256) -> int:
    """Rows per forward pass that fit in `fraction` of `free` bytes (at least 1, at most `cap`)."""
    return max(1, min(cap, int(fraction * free) // max(1, row_bytes(config, dtype, seq_len))))



class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_in_use() -> int | None:
    """Bytes the C allocator has handed out and not yet taken back (glibc's mallinfo2: heap blocks
    in use plus mmapped blocks), or None where that is unknown (not glibc). Unlike the resident
    size it does not count memory the allocator keeps after a free, so it shows what a run holds."""
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)
