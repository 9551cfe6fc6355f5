"""Benchmarks of the batched design (not part of the test suite). Run from the repository root:

    python -m benchmarks.run protocol --model toy            # ours vs reference loop vs batch size 1
    python -m benchmarks.run protocol --model random100m
    python -m benchmarks.run protocol --model smollm2        # the real chat model (fetched once)
    python -m benchmarks.run overhead --model random100m     # nnsight vs raw torch hooks, same batches
    python -m benchmarks.run scaling --model toy             # 12 / 48 / 192 cells
    python -m benchmarks.run retention --model toy           # what the resident size holds after runs

Each measured method runs in a fresh subprocess (so peak memory is its own); results are written
as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import RESULTS, in_child, machine  # noqa: F401 (RESULTS, machine: used by the other benchmarks too)


METHODS = ("ours", "reference", "reference_shared_capture", "ours_unbatched", "ours_every_block")


def one(method: str, model: str, grid: str, batch_size: int, out: str, layers: str = "paper") -> dict:
    """Run one method in this process; write its KL array to `out`; return timings."""
    import torch

    from benchmarks import protocol
    from benchmarks.models import load_spec, resolve

    model_dir = resolve(model)
    start = time.perf_counter()
    if method.startswith("reference"):
        kl, passes, tokens, token_layers, load_s = protocol.run_reference(
            model_dir, grid, shared_capture=method == "reference_shared_capture", layers=layers)
    else:
        kl, passes, tokens, token_layers, load_s = protocol.run_ours(
            load_spec(model, model_dir), grid, 1 if method == "ours_unbatched" else batch_size, layers,
            skip_layers=method != "ours_every_block")
    wall = time.perf_counter() - start
    torch.save(kl, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"method": method, "wall_s": wall, "load_s": load_s, "forward_passes": passes, "token_forwards": tokens,
            "token_layer_forwards": token_layers, "peak_rss_mib": peak}


def protocol_bench(model: str, grid: str, batch_size: int, repeats: int, layers: str = "paper",
                   methods: tuple[str, ...] = METHODS) -> dict:
    import torch

    from benchmarks.models import resolve
    from benchmarks.protocol import necessary_work

    tmp = Path(tempfile.mkdtemp())
    runs = {m: [] for m in methods}
    for r in range(repeats):
        for method in runs:
            runs[method].append(in_child(["one", method, model, grid, str(batch_size), str(tmp / f"{method}.pt"),
                                             "--layers", layers]))
    kl = {m: torch.load(tmp / f"{m}.pt") for m in runs}
    baseline = "reference" if "reference" in runs else "reference_shared_capture"
    agree = {m: float((kl[m] - kl[baseline]).abs().max()) for m in runs if m != baseline}
    summary = {
        m: {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s_all": [r["wall_s"] for r in rs],
            # The same runs less the model's load (weights, tokenizer, and nnsight's wrapping for ours).
            "run_s_median": statistics.median(r["wall_s"] - r["load_s"] for r in rs),
            "load_s_median": statistics.median(r["load_s"] for r in rs),
            "forward_passes": rs[0]["forward_passes"],
            "token_forwards": rs[0]["token_forwards"],
            "token_layer_forwards": rs[0]["token_layer_forwards"],
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in rs),
        }
        for m, rs in runs.items()
    }
    floor = necessary_work(resolve(model), grid, layers)
    ours = summary["ours"]["wall_s_median"]
    return {
        "benchmark": "protocol", "model": model, "grid": grid, "layers": layers, "batch_size": batch_size,
        "repeats": repeats, "machine": machine(), "methods": summary,
        "kl_agreement_baseline": baseline,
        "max_abs_kl_difference_vs_reference": agree,
        "speedup": {m: s["wall_s_median"] / ours for m, s in summary.items() if m != "ours"},
        "speedup_without_load": {m: s["run_s_median"] / summary["ours"]["run_s_median"]
                                 for m, s in summary.items() if m != "ours"},
        "necessary_token_forwards": floor["token_forwards"],
        "necessary_token_layer_forwards": floor["token_layer_forwards"],
        "token_forwards_over_floor": {m: s["token_forwards"] / floor["token_forwards"] for m, s in summary.items()},
        "token_layer_forwards_over_floor": {m: s["token_layer_forwards"] / floor["token_layer_forwards"]
                                            for m, s in summary.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("protocol")
    p.add_argument("--model", default="toy")
    p.add_argument("--grid", default="xu2026-short")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", choices=["paper", "all"], default="paper")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    p.add_argument("--tag", default="", help="a word added to the results file's name (a run of some methods only)")
    o = sub.add_parser("one")
    o.add_argument("method", choices=list(METHODS))
    o.add_argument("model")
    o.add_argument("grid")
    o.add_argument("batch_size", type=int)
    o.add_argument("out")
    o.add_argument("--layers", choices=["paper", "all"], default="paper")
    h = sub.add_parser("overhead")
    h.add_argument("--model", default="random100m")
    h.add_argument("--grid", default="xu2026-short")
    h.add_argument("--batch-size", type=int, default=32)
    h.add_argument("--repeats", type=int, default=3)
    o2 = sub.add_parser("one-scaling")
    o2.add_argument("model")
    o2.add_argument("grid")
    o2.add_argument("layers")
    o2.add_argument("batch_size", type=int)
    o2.add_argument("--probe", action="store_true")
    s = sub.add_parser("scaling")
    s.add_argument("--model", default="toy")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--sizes", default="4x3,8x6,16x12", help="grids as PERSONASxTASKS, comma-separated")
    s.add_argument("--layers", default="paper,all", help="comma list of paper, all")
    t = sub.add_parser("retention")
    t.add_argument("--model", default="toy")
    t.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    name = args.command  # the results file: benchmarks/results/<name>-<model>.json

    if args.command == "one":
        print(json.dumps(one(args.method, args.model, args.grid, args.batch_size, args.out, args.layers)))
        return
    if args.command == "one-scaling":
        from benchmarks.scaling import one_scaling

        print(json.dumps(one_scaling(args.model, args.grid, args.layers, args.batch_size, args.probe)))
        return
    if args.command == "protocol":
        methods = tuple(args.methods.split(","))
        if "ours" not in methods or not {"reference", "reference_shared_capture"} & set(methods):
            parser.error("--methods must include ours and a reference loop (the ratios are against them)")
        result = protocol_bench(args.model, args.grid, args.batch_size, args.repeats, args.layers, methods)
        if args.layers != "paper":
            name = f"protocol-{args.layers}"
        if args.tag:
            name = f"{name}-{args.tag}"
    elif args.command == "overhead":
        from benchmarks.overhead import overhead_bench

        result = overhead_bench(args.model, args.grid, args.batch_size, args.repeats)
    elif args.command == "retention":
        from benchmarks.retention import retention_bench

        result = retention_bench(args.model, args.batch_size)
    else:
        from benchmarks.scaling import scaling_bench

        sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes.split(",")]
        if args.sizes != s.get_default("sizes"):
            name = f"scaling-{args.sizes}"
        result = scaling_bench(args.model, args.batch_size, args.repeats, sizes, tuple(args.layers.split(",")))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{Path(args.model).name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
