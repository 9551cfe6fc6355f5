"""The `vectors` commands end to end on the toy model: extract, export, steer from the exported
file, monitor, and trace over two checkpoint folders; the output policy refuses to replace a file."""

import json
import shutil

import numpy as np
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.storage.store import load_dataset

SMALL = ["--n-questions", "2", "--n-tokens", "10", "--no-progress"]


def _ok(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_extract_export_steer_monitor(tmp_path):
    out, st = tmp_path / "v.nc", tmp_path / "v.safetensors"
    text = _ok(["vectors", "extract", "--traits", "pirate", "--layers", "2,4", "--out", str(out), "--export", str(st), *SMALL])
    assert "pirate" in text and "extracted" in text
    ds = load_dataset(out)
    assert ds.attrs["experiment"] == "vectors-extract" and "hidden_states[L]" in ds.attrs["layer_convention"]
    # A second run of the same computation reuses the file; a different one is refused without --overwrite.
    assert "already done" in _ok(["vectors", "extract", "--traits", "pirate", "--layers", "2,4", "--out", str(out), *SMALL])
    refused = CliRunner().invoke(main, ["vectors", "extract", "--traits", "robot", "--layers", "2,4", "--out", str(out), *SMALL])
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    steer_out = tmp_path / "s.nc"
    _ok(["vectors", "steer", "--vectors", str(st), "--layers", "4", "--coefs", "0,4", "--kinds", "vector,random",
         "--out", str(steer_out), *SMALL])
    s = load_dataset(steer_out)
    assert s.kind.values.tolist() == ["vector", "random_s0"] and (tmp_path / "s-steering.png").exists()
    steered = s.text.sel(coef=0.0, kind="vector", layer=4).isel(model=0, trait=0).values.tolist()
    assert steered == s.baseline_text.sel(baseline="clean").isel(model=0, trait=0).values.tolist()
    bad = CliRunner().invoke(main, ["vectors", "steer", "--vectors", str(out), "--layers", "3", "--out", str(tmp_path / "x.nc"), *SMALL])
    assert bad.exit_code == 1 and "no layer [3]" in bad.output
    _ok(["vectors", "monitor", "--vectors", str(out), "--out", str(tmp_path / "m.nc"), *SMALL])


def test_trace_over_two_checkpoint_folders(tmp_path, toy_dir):
    folders = []
    for step in (5, 20):
        folder = tmp_path / f"ckpt-{step}"
        shutil.copytree(toy_dir, folder)
        (folder / "checkpoint.json").write_text(json.dumps({"step": step}))
        folders += ["--revision", str(folder)]
    _ok(["vectors", "trace", *folders, "--traits", "pirate", "--layers", "2,4", "--steer-layer", "4", "--seeds", "0",
         "--out-dir", str(tmp_path / "trace"), *SMALL])
    ds = load_dataset(tmp_path / "trace" / "trace.nc")
    assert ds.step.values.tolist() == [5, 20]
    # The same weights twice: the vectors agree, so every cosine to the final one is 1.
    np.testing.assert_allclose(ds.cos_to_final.values, 1.0, atol=1e-5)
    assert set(ds.kind.values.tolist()) == {"vector", "random_s0", "shuffled_s0"}
    assert (tmp_path / "trace" / "trace-cos_matrix.png").exists()


def test_toy_train_checkpoints_do_not_change_the_run(tmp_path):
    import torch
    from safetensors.torch import load_file

    from nnsight_persona.models.toy.cli import toy

    args = ["--tiny", "--steps", "4", "--batch-size", "8", "--threads", "1", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert CliRunner().invoke(toy, ["train", "--out", str(a), *args]).exit_code == 0
    result = CliRunner().invoke(toy, ["train", "--out", str(b), "--checkpoints", "2,4", *args])
    assert result.exit_code == 0, result.output
    assert json.loads((b / "checkpoints" / "step-00002" / "checkpoint.json").read_text())["step"] == 2
    final_a, final_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    last = load_file(b / "checkpoints" / "step-00004" / "model.safetensors")
    early = load_file(b / "checkpoints" / "step-00002" / "model.safetensors")
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]) and torch.equal(final_b[name], last[name]), name
    assert any(not torch.equal(early[n], last[n]) for n in early)
    bad = CliRunner().invoke(toy, ["train", "--out", str(tmp_path / "c"), "--checkpoints", "9", *args])
    assert bad.exit_code == 2 and "1..4" in bad.output
