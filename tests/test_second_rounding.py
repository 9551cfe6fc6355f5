"""The second rounding of .ci/run is real: under its CPU kernel setting, matmul, SiLU and attention
round differently from this machine's own kernels, so the numeric tests it reruns meet other
rounding, not the same numbers twice. Runs only in that pass (NNSIGHT_PERSONA_SECOND_ROUNDING=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.numeric

SETTING = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")

# The ops the package's traces run most, on float32 inputs of the shapes of a small model.
PROBE = """
import hashlib, torch
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 576, generator=g)
w = torch.randn(576, 1536, generator=g) / 24
q, k, v = (torch.randn(1, 9, 48, 64, generator=g) for _ in range(3))
out = {"matmul": x @ w, "silu": torch.nn.functional.silu(x @ w),
       "sdpa": torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)}
print(" ".join(f"{name}={hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]}" for name, t in out.items()))
"""


def _digests(env) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return dict(item.split("=") for item in done.stdout.split())


@pytest.mark.skipif(not os.environ.get("NNSIGHT_PERSONA_SECOND_ROUNDING"),
                    reason="runs in the second-rounding pass of .ci/run only")
def test_the_second_rounding_really_rounds_differently():
    assert all(os.environ.get(name) for name in SETTING), f"the second pass must set {SETTING}"
    second = _digests(dict(os.environ))
    native = _digests({k: v for k, v in os.environ.items() if k not in SETTING})
    differing = sorted(op for op in native if native[op] != second[op])
    print(f"ops rounding differently under {[os.environ[n] for n in SETTING]}: {differing}")
    assert differing, ("the second CPU setting rounds matmul, SiLU and attention exactly as the native kernels "
                       "do here: the second pass would test the same numbers twice")
