"""Markdown tables made from benchmarks/results/*.json, for the generated blocks of
docs/performance.md (see nnsight_persona/docblocks.py): the docs quote no typed timing."""

from __future__ import annotations

import json
from pathlib import Path

from nnsight_persona.analysis.tables import markdown

METHOD_NAMES = {
    "ours": "ours",
    "reference": "reference (one pass per patch)",
    "reference_shared_capture": "reference, shared capture",
    "ours_unbatched": "ours, batch size 1",
    "ours_every_block": "ours, every block run",
}


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _mib(value: float) -> str:
    return f"{value:,.0f} MiB"


def protocol_table(*paths: str) -> str:
    """Wall time, passes, token-forwards and token-layer-forwards (each against its floor), peak
    memory and KL agreement of each method, per model, and the time ratios measured in one run."""
    rows = []
    for path in paths:
        d = _load(path)
        floor, layer_floor = d.get("necessary_token_forwards"), d.get("necessary_token_layer_forwards")
        speed = d["methods"]["ours"]["wall_s_median"]
        for key, name in METHOD_NAMES.items():
            m = d["methods"].get(key)
            if m is None:
                continue
            diff = d["max_abs_kl_difference_vs_reference"].get(key)
            layer_work = m.get("token_layer_forwards")
            run, ours_run = m.get("run_s_median"), d["methods"]["ours"].get("run_s_median")
            rows.append([
                f"{d['model']} ({d.get('layers', 'paper')} layers)" if key == "ours" else "", name,
                f"{m['wall_s_median']:.1f} s", "1.0x" if key == "ours" else f"{m['wall_s_median'] / speed:.1f}x",
                "not measured" if run is None else f"{run:.1f} s" + ("" if key == "ours" else f" ({run / ours_run:.1f}x)"),
                f"{m['forward_passes']:,}", f"{m['token_forwards']:,} ({m['token_forwards'] / floor:.2f}x)",
                f"{layer_work:,} ({layer_work / layer_floor:.2f}x)" if layer_work and layer_floor else "not measured",
                _mib(m["peak_rss_mib_median"]),
                "(itself)" if key == d.get("kl_agreement_baseline", "reference") else f"{diff:.1e}",
            ])
    return markdown(["model", "method", "wall time", "time / ours", "without the model load (/ ours)", "forward passes",
                     "token-forwards (/ floor)", "token-layer-forwards (/ floor)", "peak RSS",
                     "max \\|KL difference\\| (vs the first reference)"], rows)


def overhead_table(path: str) -> str:
    d = _load(path)
    w = d["wall_s_median"]
    return markdown(["model", "nnsight traces", "raw torch hooks", "ratio", "max \\|KL difference\\|"],
                    [[d["model"], f"{w['nnsight']:.1f} s", f"{w['raw_hooks']:.1f} s", f"{d['nnsight_over_raw']:.2f}x",
                      f"{d['max_abs_kl_difference']:.1e}"]])


def scaling_table(*paths: str) -> str:
    rows = []
    for path in paths:
        for r in _load(path)["runs"]:
            rss = r["peak_rss_mib_all"]
            rows.append([
                r["cells"], r["layers"], f"{r['wall_s']:.1f} s", f"{r['wall_s_per_cell']:.3f} s", f"{r['saved_mib']:.1f} MiB",
                f"{r['peak_rss_mib']:.0f} ({min(rss):.0f}-{max(rss):.0f}) MiB" if len(rss) > 1 else _mib(r["peak_rss_mib"]),
                f"{r['live_peak_mib']:.1f} MiB", f"{r['live_sweep_first_mib']:.1f} -> {r['live_sweep_last_mib']:.1f} MiB",
                f"{r['live_sweep_first_mib'] - r['saved_mib']:.1f} / {r['live_peak_mib'] - r['saved_mib']:.1f} MiB",
            ])
    return markdown(["cells", "layers", "wall time", "per cell", "saved data", "peak RSS (runs)", "live peak",
                     "live between batches", "live beyond saved data (between / peak)"], rows)


def retention_table(path: str) -> str:
    runs = _load(path)["runs"]
    return markdown(["run", "cells", "high-water", "resident", "resident after malloc_trim", "live heap"],
                    [[i + 1, r["cells"], _mib(r["high_water_mib"]), _mib(r["resident_mib"]),
                      _mib(r["resident_after_trim_mib"]), f"{r['live_heap_mib']:.1f} MiB"] for i, r in enumerate(runs)])


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s" if seconds >= 60 else f"{seconds:.1f} s"


def reproduce_table(*paths: str) -> str:
    """Each reproduce step's time, before and after (when the file has both), and the total."""
    rows = []
    for path in paths:
        d = _load(path)
        runs = d["runs"]
        before, after = runs.get("before"), runs["after"]
        head = f"{d['model']}"
        for i, step in enumerate([*after["steps_s"], "total"]):
            get = lambda run: run["total_s"] if step == "total" else run["steps_s"].get(step)
            b, a = (get(before) if before else None), get(after)
            rows.append([head if i == 0 else "", f"**{step}**" if step == "total" else step,
                         _duration(b) if b is not None else "", _duration(a),
                         f"{b / a:.1f}x" if b is not None and min(a, b) >= 1 else ""])  # not for steps under a second
    def said(d):
        b = d["runs"]["before"]
        return f"{d['model']}: {b['commit']}" + (f", {b['measured']}" if b.get("measured") else ", the same run")
    commits = "; ".join(said(_load(p)) for p in paths if "before" in _load(p)["runs"])
    return markdown(["model", "step", f"before ({commits})" if commits else "before", "after", "before / after"], rows)


def prefix_table(*paths: str) -> str:
    """Inject and knockout on shared prefixes against whole sequences, measured in one process."""
    rows = []
    for path in paths:
        d = _load(path)
        for name in ("inject", "knockout"):
            r = d[name]
            w, p = r["wall_s_median"], r
            rows.append([f"{d['model']} ({d['cells']} cells)" if name == "inject" else "", name,
                         f"{w['whole_sequences']:.1f} s", f"{w['shared_prefixes']:.1f} s", f"{r['speedup']:.1f}x",
                         f"{p['whole_sequences']['token_positions']:,} / {p['shared_prefixes']['token_positions']:,}",
                         f"{p['whole_sequences']['passes']:,} / {p['shared_prefixes']['passes']:,}",
                         f"{r['max_abs_difference']:.1e} (largest KL {r['largest_value']:.2f})"])
    return markdown(["model", "experiment", "whole sequences", "shared prefixes", "speedup",
                     "token positions (whole / shared)", "traces (whole / shared)", "max \\|difference\\|"], rows)


def profile_table(path: str, rows: str = "8") -> str:
    """The first categories of a benchmarks.profile_summary file (share of samples)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    total = lines[0].split()[-1]
    body = [line.split(None, 1) for line in lines[1:] if not line.startswith("---")][: int(rows)]
    return markdown([f"part (of {total} samples)", "share of samples"], [[name, share] for share, name in body])


def evidence_cost_table(*paths: str) -> str:
    """The evidence measure's share of a whole reproduce run, measured in that run."""
    rows = []
    for path in paths:
        d = _load(path)
        rows.append([d["model"], _duration(d["total_s"]), _duration(d["scoring_s"]), d["answers_scored"],
                     f"{100 * d['share']:.1f}%", f"{d['machine']['cpu']}, {d['machine']['torch_threads']} threads"])
    return markdown(["model", "reproduce, whole run", "of which evidence scoring", "answers scored", "share",
                     "machine"], rows)


GENERATORS = {
    "bench-evidence-cost": evidence_cost_table,
    "bench-profile": profile_table,
    "bench-reproduce": reproduce_table,
    "bench-prefix": prefix_table,
    "bench-protocol": protocol_table,
    "bench-overhead": overhead_table,
    "bench-scaling": scaling_table,
    "bench-retention": retention_table,
}
