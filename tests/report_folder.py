"""A results folder for the report tests: a few committed toy results with their figures, and an
interrupted copy of one (completed=0, half its cells never reached)."""

import os
import shutil
from pathlib import Path

import netCDF4
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "artifacts" / "toy"
FILES = ("substitute-toy.nc", "decompose-toy.nc", "markers-toy.nc")
PARTIAL = "substitute-partial.nc"


def make_folder(folder: Path) -> Path:
    from nnsight_persona.storage.store import load_dataset, save_dataset

    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(TOY / name, folder / name)
        made = (folder / name).stat().st_mtime
        for png in TOY.glob(f"{Path(name).stem}-*.png"):
            shutil.copy2(png, folder / png.name)
            os.utime(folder / png.name, (made + 1, made + 1))  # drawn after the result, as plot does
    partial = load_dataset(TOY / "substitute-toy.nc")
    partial["kl"][..., 6:, :] = np.nan
    partial.attrs.update(completed=0, stopped_by="Ctrl-C")
    save_dataset(partial, folder / PARTIAL)
    return folder


def raw(path: Path, variable: str) -> tuple[np.ndarray, dict]:
    """A variable as stored (netCDF4 directly, no package code) and its coordinate lists."""
    with netCDF4.Dataset(path) as f:
        values = np.array(f[variable][:].filled(np.nan) if np.ma.isMaskedArray(f[variable][:]) else f[variable][:])
        coords = {d: [v.item() if hasattr(v, "item") else v for v in f[d][:]] for d in f[variable].dimensions
                  if d in f.variables}
    return values, coords


def additive_medians(path: Path) -> dict:
    """(position, layer) -> the median over cells of the additive KL, NaN cells left out."""
    kl, coords = raw(path, "kl")
    kl = kl[0]  # the one model
    c = coords["condition"].index("additive")
    return {(p, int(L)): float(np.nanmedian(kl[i, j, :, c]))
            for i, L in enumerate(coords["layer"]) for j, p in enumerate(coords["position"])}


def decompose_medians(path: Path, variable: str = "cos_xy_sum") -> dict:
    values, coords = raw(path, variable)
    return {(p, int(L)): float(np.nanmedian(values[0, i, j, :]))
            for i, L in enumerate(coords["layer"]) for j, p in enumerate(coords["position"])}
