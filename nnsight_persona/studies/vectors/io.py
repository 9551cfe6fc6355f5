"""Persona vectors to and from files other tools read: safetensors with metadata, and the
original repository's ``.pt`` files ([n_layers + 1, hidden] tensors, index 0 = embeddings).

safetensors: one tensor per (trait, token_set), named ``{trait}.{token_set}``, shape
[n_layers_read, hidden] for the layers listed in the metadata. The metadata (strings) hold the
model, its revision, the checkpoint, the layer convention, the token set, the layers, the
threshold, the scorer, the elicitation variant and the number of pairs kept per trait. An
extraction of several elicitation variants is written as one file per variant
(`export_variants`: NAME-VARIANT.safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from ...core.errors import PersonaError

LAYER_CONVENTION = ("layer L = hidden_states[L] of transformers: 0 = embeddings, L = output of block L-1 "
                    "(steer by adding to that block's output); n_layers = the last block's raw output, "
                    "before the final norm")


class VectorFileError(PersonaError):
    """A vectors file that cannot be read or written."""


def single_variant(ds: xr.Dataset, where: str = "") -> xr.Dataset:
    """`ds` when it holds the vectors of one elicitation variant; a file of several must be split
    first (steering, monitoring and export take one vector per trait)."""
    if "elicitation" in ds.dims and ds.sizes["elicitation"] > 1:
        raise VectorFileError(f"{where or 'the vectors file'} holds vectors of several elicitation variants "
                              f"{ds.elicitation.values.tolist()}; use the safetensors file of one (`vectors extract "
                              "--export` writes one per variant) or extract with one --elicitation")
    return ds


def export_variants(ds: xr.Dataset, path: str | Path, checkpoint: int = 0) -> list[Path]:
    """`export_safetensors` of each elicitation variant of `ds`: `path` itself for a dataset of
    one variant, else PATH-STEM-VARIANT.safetensors per variant."""
    path = Path(path)
    if "elicitation" not in ds.dims:
        return [export_safetensors(ds, path, checkpoint)]
    return [export_safetensors(ds.sel(elicitation=v).assign_attrs(elicitation=v),
                               path.with_name(f"{path.stem}-{v}{path.suffix}"), checkpoint)
            for v in ds.elicitation.values.tolist()]


def export_safetensors(ds: xr.Dataset, path: str | Path, checkpoint: int = 0) -> Path:
    from safetensors.numpy import save_file

    sel = single_variant(ds, str(path)).isel(model=0, checkpoint=checkpoint)
    tensors = {f"{t}.{s}": np.ascontiguousarray(sel.vector.sel(trait=t, token_set=s).values.astype(np.float32))
               for t in sel.trait.values.tolist() for s in sel.token_set.values.tolist()}
    meta = {
        "format": "nnsight-persona persona vectors",
        "model": str(ds.attrs.get("model_id", "")),
        "revision": str(ds.attrs.get("checkpoint_revision", ds.attrs.get("model_revision", ""))),
        "checkpoint": str(sel.checkpoint.values),
        "step": str(int(sel.step.values)) if "step" in sel.coords else "-1",
        "layer_convention": LAYER_CONVENTION,
        "layers": json.dumps([int(L) for L in sel.layer.values]),
        "token_sets": json.dumps(sel.token_set.values.tolist()),
        "threshold": str(ds.attrs.get("threshold", "")),
        "scorer": str(ds.attrs.get("scorer", "")),
        "elicitation": str(ds.attrs.get("elicitation", "instruction")),
        "pairs_kept": json.dumps({t: int(sel.n_kept.sel(trait=t)) for t in sel.trait.values.tolist()}),
        "outcome": json.dumps({t: str(sel.outcome.sel(trait=t).values) for t in sel.trait.values.tolist()}),
        "resid_norm": json.dumps({t: [float(x) for x in sel.resid_norm.sel(trait=t).values]
                                  for t in sel.trait.values.tolist()}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def import_safetensors(path: str | Path) -> xr.Dataset:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise VectorFileError(f"cannot read {path} as safetensors: {exc}") from None
    if "layers" not in meta:
        raise VectorFileError(f"{path} has no 'layers' metadata: not a persona-vectors file of this package")
    layers = json.loads(meta["layers"])
    token_sets = json.loads(meta["token_sets"])
    traits = sorted({k.rsplit(".", 1)[0] for k in tensors})
    vector = np.stack([np.stack([tensors[f"{t}.{s}"] for s in token_sets]) for t in traits])
    kept = json.loads(meta.get("pairs_kept", "{}"))
    outcome = json.loads(meta.get("outcome", "{}"))
    resid = json.loads(meta.get("resid_norm", "{}"))
    ds = _vector_dataset(vector, traits, token_sets, layers, meta.get("model", ""), meta.get("checkpoint", ""),
                         int(meta.get("step", -1)))
    ds["n_kept"] = (("model", "checkpoint", "trait"), np.array([[[kept.get(t, -1) for t in traits]]]))
    ds["outcome"] = (("model", "checkpoint", "trait"), np.array([[[outcome.get(t, "") for t in traits]]], dtype=object))
    ds["resid_norm"] = (("model", "checkpoint", "trait", "layer"),
                        np.array([[[resid.get(t, [np.nan] * len(layers)) for t in traits]]], dtype=np.float32))
    ds.attrs.update({k: v for k, v in meta.items() if k != "resid_norm"})
    ds.attrs["model_id"] = meta.get("model", "")
    ds.attrs["checkpoint_revision"] = meta.get("revision", "")
    return ds


def import_original_pt(path: str | Path, trait: str, model: str = "", token_set: str = "response_avg") -> xr.Dataset:
    """The original repository's vector file: a tensor [n_layers + 1, hidden] whose index L is
    hidden_states[L] (the same convention as ours)."""
    import torch

    try:
        t = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise VectorFileError(f"cannot read {path} as a torch tensor file: {exc}") from None
    if not isinstance(t, torch.Tensor) or t.ndim != 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise VectorFileError(f"{path}: expected a tensor [n_layers + 1, hidden], got {got}")
    vector = t.float().numpy()[None, None]
    ds = _vector_dataset(vector, [trait], [token_set], list(range(t.shape[0])), model, Path(path).stem, -1)
    ds["resid_norm"] = (("model", "checkpoint", "trait", "layer"), np.full((1, 1, 1, t.shape[0]), np.nan, np.float32))
    ds.attrs.update(model_id=model, source=f"original .pt file {Path(path).name}", layer_convention=LAYER_CONVENTION)
    return ds


def _vector_dataset(vector, traits, token_sets, layers, model, checkpoint, step) -> xr.Dataset:
    ds = xr.Dataset(
        {"vector": (("model", "checkpoint", "trait", "token_set", "layer", "hidden"), vector[None, None]
                    if vector.ndim == 4 else vector)},
        coords={"model": [model], "checkpoint": [checkpoint], "step": ("checkpoint", [step]), "trait": traits,
                "token_set": token_sets, "layer": layers},
    )
    ds["norm"] = np.sqrt((ds.vector ** 2).sum("hidden"))
    return ds
