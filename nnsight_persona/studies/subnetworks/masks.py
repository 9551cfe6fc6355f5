"""Mask scores, per-row top-k with deterministic ties, random masks, mask files and statistics.

Scores (over a linear layer's weight W [out, in] and its input-channel norms):
- `wanda`: S_ij = |W_ij| * mean over calibration samples of ||X_j||;
- `contrastive`: z_j = (mu_a - mu_b) / sqrt(var_a + var_b + 1e-6) over the per-sample norms of the
  persona's matching answers (a) and its not-matching ones (b), population variances; S_ij =
  |W_ij| * relu(z_j), or |W_ij| * softplus(z_j / tau).
A weight mask keeps, in every output row, exactly n_keep = in - floor(sparsity * in + 0.5) entries:
the highest scores. A channel mask (the structured variant) scores input channels by the column sums
sum_i S_ij and keeps n_keep channels of each module.

Ties (relu makes every channel with z <= 0 score 0, so with 70% kept much of a row is a tie) are
broken by a priority drawn uniformly from a generator seeded by (seed, module name): among equal
scores the entry with the lower priority is kept. The same seed gives the same mask; random masks
are the same top-k over all-zero scores with a priority stream of their own ("random:" prefix),
so they share nothing with a persona mask's tie order.
"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import torch

METHODS = ("wanda", "contrastive")
ACTIVATIONS = ("relu", "softplus")
Z_EPS = 1e-6


def n_keep(n: int, sparsity: float) -> int:
    """Entries of `n` kept at `sparsity`: n - floor(sparsity * n + 0.5)."""
    return n - int(math.floor(sparsity * n + 0.5))


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per channel (mu_a - mu_b) / sqrt(var_a + var_b + eps) over samples (dim 0), population variance."""
    a, b = a.double(), b.double()
    z = (a.mean(0) - b.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + b.var(0, unbiased=False) + Z_EPS)
    return z.float()


def channel_weight(method: str, matching: torch.Tensor, not_matching: torch.Tensor, activation: str = "relu",
                   tau: float = 2.0) -> torch.Tensor:
    """The per-input-channel factor of the score: mean norm (wanda) or relu/softplus of z (contrastive)."""
    if method == "wanda":
        return matching.mean(0)
    if method != "contrastive":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    z = z_scores(matching, not_matching)
    if activation == "relu":
        return torch.relu(z)
    if activation == "softplus":
        return torch.nn.functional.softplus(z / tau)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def priority(shape, seed: int, name: str) -> torch.Tensor:
    """Uniform tie-break priorities, a function of (seed, name) only."""
    generator = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
    return torch.rand(tuple(shape), generator=generator)


def keep_top(scores: torch.Tensor, sparsity: float, seed: int, name: str) -> torch.Tensor:
    """Bool mask of `scores`' shape keeping n_keep(last dim) entries of each row (of the last dim):
    the highest scores, ties broken by the seeded priority (lower kept first)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = n_keep(scores.shape[-1], sparsity)
    order_by_priority = torch.argsort(priority(scores.shape, seed, name), dim=-1)
    reordered = scores.float().gather(-1, order_by_priority)
    ranked = torch.argsort(reordered, dim=-1, descending=True, stable=True)  # stable: priority order among ties
    kept = order_by_priority.gather(-1, ranked[..., :k])
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.scatter_(-1, kept, True)
    return mask


def random_mask(shape, sparsity: float, seed: int, name: str) -> torch.Tensor:
    """A uniformly random mask keeping exactly n_keep entries of each row."""
    return keep_top(torch.zeros(tuple(shape)), sparsity, seed, f"random:{name}")


def weight_mask(weight: torch.Tensor, factor: torch.Tensor, sparsity: float, seed: int, name: str) -> torch.Tensor:
    return keep_top(weight.detach().abs().float().cpu() * factor[None, :], sparsity, seed, name)


def channel_mask(weight: torch.Tensor, factor: torch.Tensor, sparsity: float, seed: int, name: str) -> torch.Tensor:
    """Input channels kept: the column sums of the Wanda/contrastive score, top n_keep."""
    return keep_top(weight.detach().abs().float().cpu().sum(0) * factor, sparsity, seed, f"channel:{name}")


# --- files -------------------------------------------------------------------------------------

def mask_key(persona: str, sparsity: float, module: str) -> str:
    return f"{persona}/{sparsity:g}/{module}"


def save_masks(masks: dict, path, spec: dict) -> None:
    """Save {(persona, sparsity): {module: bool tensor}} as safetensors, 8 entries a byte
    (numpy packbits); the spec and every tensor's shape go in the file's metadata."""
    from safetensors.torch import save_file

    tensors, shapes = {}, {}
    for (persona, sparsity), by_module in masks.items():
        for module, mask in by_module.items():
            key = mask_key(persona, sparsity, module)
            tensors[key] = torch.from_numpy(np.packbits(mask.numpy().reshape(-1)))
            shapes[key] = list(mask.shape)
    metadata = {"format": "packbits", "spec": json.dumps(spec, sort_keys=True), "shapes": json.dumps(shapes)}
    save_file(tensors, str(path), metadata=metadata)


def load_masks(path) -> tuple[dict, dict]:
    """(masks as save_masks takes them, spec) from a mask file."""
    from safetensors import safe_open

    from ...core.errors import ResultFileError

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "packbits" or "spec" not in meta:
                raise ResultFileError(f"{path} is not a mask file of `subnetwork find` (no packbits spec metadata)")
            shapes = json.loads(meta["shapes"])
            masks: dict = {}
            for key in f.keys():
                persona, sparsity, module = key.split("/", 2)
                shape = shapes[key]
                bits = np.unpackbits(f.get_tensor(key).numpy())[: int(np.prod(shape))]
                masks.setdefault((persona, float(sparsity)), {})[module] = torch.from_numpy(bits.astype(bool)).reshape(shape)
            return masks, json.loads(meta["spec"])
    except (OSError, ValueError, KeyError) as exc:
        raise ResultFileError(f"cannot read {path} as a mask file ({exc})") from None


# --- statistics --------------------------------------------------------------------------------

def module_layer(name: str) -> int:
    """The decoder block index in a module name ('model.layers.3.mlp.up_proj' -> 3), -1 if none."""
    parts = name.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b)
    return -1


def module_kind(name: str) -> str:
    """'model.layers.3.mlp.up_proj' -> 'mlp.up_proj'; the head keeps its name."""
    parts = name.split(".")
    for i, (a, b) in enumerate(zip(parts, parts[1:])):
        if a == "layers" and b.isdigit():
            return ".".join(parts[i + 2:])
    return name


def statistics(masks: dict, personas: list[str], sparsities: list[float], modules: list[str]):
    """Counts per (persona, sparsity, module): entries, kept; per pair of personas: kept by both;
    with the kept fraction, overlap |A & B| / |A| and the Jaccard index of kept and pruned sets."""
    import xarray as xr

    P, S, M = len(personas), len(sparsities), len(modules)
    total = np.array([masks[(personas[0], sparsities[0])][m].numel() for m in modules], dtype=np.int64)
    kept = np.zeros((P, S, M), dtype=np.int64)
    both = np.zeros((P, P, S, M), dtype=np.int64)
    for s, sp in enumerate(sparsities):
        for m, mod in enumerate(modules):
            flat = [masks[(p, sp)][mod].reshape(-1) for p in personas]
            for a in range(P):
                kept[a, s, m] = int(flat[a].sum())
                for b in range(P):
                    both[a, b, s, m] = int((flat[a] & flat[b]).sum())
    either = kept[:, None] + kept[None, :] - both
    pruned_both = total - either
    pruned_either = total - both
    coords = {"persona": personas, "other": personas, "sparsity": sparsities, "module": modules,
              "layer": ("module", [module_layer(m) for m in modules]),
              "kind": ("module", [module_kind(m) for m in modules])}
    with np.errstate(invalid="ignore", divide="ignore"):
        ds = xr.Dataset(
            {
                "n_entries": (("module",), total, {"long_name": "mask entries (weights or input channels)"}),
                "n_kept": (("persona", "sparsity", "module"), kept, {"long_name": "entries kept"}),
                "n_kept_both": (("persona", "other", "sparsity", "module"), both,
                                {"long_name": "entries kept by both personas' masks"}),
                "kept_fraction": (("persona", "sparsity", "module"), kept / total, {"long_name": "kept fraction", "units": "1"}),
                "overlap": (("persona", "other", "sparsity", "module"), both / kept[:, None],
                            {"long_name": "|A & B| / |A| of kept entries", "units": "1"}),
                "jaccard": (("persona", "other", "sparsity", "module"), both / either,
                            {"long_name": "Jaccard index of kept entries", "units": "1"}),
                "jaccard_pruned": (("persona", "other", "sparsity", "module"),
                                   np.where(pruned_either > 0, pruned_both / np.maximum(pruned_either, 1), np.nan),
                                   {"long_name": "Jaccard index of pruned entries", "units": "1"}),
            },
            coords=coords,
        )
    return ds


def overall(ds, variable: str, persona: str, other: str | None, sparsity: float) -> float:
    """`variable` (kept_fraction, jaccard, jaccard_pruned, overlap) over all modules, from the counts."""
    total = float(ds.n_entries.sum())
    kept_a = float(ds.n_kept.sel(persona=persona, sparsity=sparsity).sum())
    if variable == "kept_fraction":
        return kept_a / total
    kept_b = float(ds.n_kept.sel(persona=other, sparsity=sparsity).sum())
    both = float(ds.n_kept_both.sel(persona=persona, other=other, sparsity=sparsity).sum())
    if variable == "overlap":
        return both / kept_a
    if variable == "jaccard":
        return both / (kept_a + kept_b - both)
    if variable == "jaccard_pruned":
        pruned_both = total - (kept_a + kept_b - both)
        pruned_either = total - both
        return pruned_both / pruned_either if pruned_either else float("nan")
    raise ValueError(f"unknown overall statistic {variable!r}")
