"""Where a py-spy profile's samples fall: the share of samples whose stack passes through each
part of the model and the tracing machinery (a sample can count under several), and the top leaf
frames. For the profile of greedy marker generation on SmolLM2 in docs/performance.md:

    py-spy record --format raw -r 50 -o markers.prof -- nnsight-persona markers --model smollm2 \\
        --grid xu2026-long --cells engineer__arch,... --out /tmp/markers.nc
    python -m benchmarks.profile_summary markers.prof > benchmarks/results/profile-markers-smollm2.txt
"""

from __future__ import annotations

import collections
import sys

PARTS = ("LlamaMLP", "LlamaAttention", "LlamaRMSNorm", "rotary", "apply_rotary_pos_emb", "lm_head", "embed_tokens",
         "Linear", "sdpa", "create_causal_mask", "masking_utils", "cache_utils")


def summary(path: str) -> str:
    total, parts, leaves = 0, collections.Counter(), collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, n = line.rsplit(" ", 1)
            n = int(n)
            total += n
            frames = stack.split(";")
            has = lambda s: any(s in frame for frame in frames)
            if has("modeling_llama"):
                parts["inside the model forward"] += n
            elif has("nnsight"):
                parts["nnsight outside the model"] += n
            if has("generation/utils.py") and not has("modeling_llama"):
                parts["transformers generate loop outside the model"] += n
            for key in PARTS:
                if has(key):
                    parts[key] += n
            leaves[frames[-1].split(" (")[0]] += n
    lines = [f"total samples {total}"]
    lines += [f"{100 * v / total:5.1f}%  {k}" for k, v in parts.most_common()]
    lines += ["--- top leaves"] + [f"{100 * v / total:5.1f}%  {k}" for k, v in leaves.most_common(15)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(summary(sys.argv[1]))
