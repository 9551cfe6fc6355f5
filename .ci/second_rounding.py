"""Checks that the CI's second CPU setting really rounds differently from the default one.

.ci/run reruns the `numeric` tests under SECOND (below). If that setting picked the same kernels as
the default on this CPU, the rerun would test the same rounding twice and prove nothing, so this
script computes a matmul, SiLU and scaled-dot-product attention in a child process under each
setting and exits 1 unless the results differ bitwise. Usage: python .ci/second_rounding.py
"""
import hashlib
import json
import os
import subprocess
import sys

SECOND = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
KEYS = tuple(SECOND)

CHILD = r"""
import hashlib, json, torch
torch.manual_seed(0)
x = torch.randn(64, 576)
w = torch.randn(576, 1536) / 24
q, k, v = (torch.randn(1, 9, 40, 64) for _ in range(3))
out = {
    "matmul": x @ w,
    "silu": torch.nn.functional.silu(x * 3),
    "sdpa": torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
}
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  **{name: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for name, t in out.items()}}))
"""


def run(overrides: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(overrides)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> int:
    first, second = run({}), run(SECOND)
    differ = [op for op in ("matmul", "silu", "sdpa") if first[op] != second[op]]
    setting = " ".join(f"{k}={v}" for k, v in SECOND.items())
    print(f"second rounding ({setting}): ATen kernels {first['capability']} -> {second['capability']}; "
          f"ops that round differently: {', '.join(differ) or 'NONE'}")
    if not differ:
        print("FAIL: the second setting rounds exactly as the default on this CPU, so rerunning the "
              "numeric tests under it would test nothing new", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
