"""The command line end to end through click's CliRunner, on a tiny model saved to disk."""

import pytest
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.storage.store import load_dataset


def _run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_capture_end_to_end(tiny_dirs, tiny_grid_file, tmp_path):
    out = tmp_path / "capture.nc"
    result = _run("capture", "--model", str(tiny_dirs["gemma2"]), "--grid", str(tiny_grid_file),
                  "--layers", "0,2,4", "--positions", "p_last,g1", "--out", str(out), "--no-progress",
                  "--n-continuation", "3")
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert ds.attrs["completed"] == 1
    assert list(ds.layer.values) == [0, 2, 4]
    assert list(ds.position.values) == ["p_last", "g1"]
    assert ds.resid.sizes == {"model": 1, "layer": 3, "position": 2, "cell": 4, "condition": 4, "hidden": 32}
    assert ds.attrs["dtype"] == "float32" and ds.attrs["model_family"] == "gemma2"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--grid", "no-such-grid"], "no grid named 'no-such-grid'"),
        (["--layers", "0,9"], "layer(s) [9] out of range"),
        (["--positions", "p_last,g7"], "unknown position(s) ['g7']"),
        (["--cells", "yoda__poem"], "no cell 'yoda__poem'"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_dirs, tiny_grid_file, tmp_path, args, expected):
    base = ["capture", "--model", str(tiny_dirs["qwen2"]), "--grid", str(tiny_grid_file), "--out",
            str(tmp_path / "x.nc"), "--no-progress"]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.nc").exists()


def test_model_without_chat_template_is_refused(tiny_dirs, tmp_path, tiny_grid_file):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_dirs["llama"], bare)
    for f in bare.glob("chat_template*"):
        f.unlink()
    cfg = bare / "tokenizer_config.json"
    import json

    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["capture", "--model", str(bare), "--grid", str(tiny_grid_file)])
    assert result.exit_code != 0 and "has no chat template" in result.output


def test_grids_command_lists_bundled_grids():
    result = _run("grids")
    assert result.exit_code == 0 and "xu2026-long" in result.output and "48 cells" in result.output


def test_experiments_reuse_a_capture_file(tiny_dirs, tiny_grid_file, tmp_path):
    cap = tmp_path / "capture.nc"
    assert _run("capture", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--out", str(cap),
                "--no-progress").exit_code == 0
    dec = tmp_path / "decompose.nc"
    result = _run("decompose", "--capture", str(cap), "--out", str(dec))
    assert result.exit_code == 0, result.output
    assert "cos_xy_sum" in result.output and load_dataset(dec).attrs["experiment"] == "decompose"
    sub = tmp_path / "substitute.nc"
    result = _run("substitute", "--capture", str(cap), "--layers", "1,3", "--positions", "p_last,g1",
                  "--conditions", "additive,oracle", "--out", str(sub), "--no-progress")
    assert result.exit_code == 0, result.output
    ds = load_dataset(sub)
    assert list(ds.condition.values) == ["additive", "oracle"] and list(ds.layer.values) == [1, 3]
    assert abs(ds.kl.sel(condition="oracle")).max() < 1e-5
    mk = tmp_path / "markers.nc"
    result = _run("markers", "--capture", str(cap), "--layers", "2", "--n-tokens", "5", "--out", str(mk), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "cells with a marker" in result.output
    assert "mean evidence" in result.output and "AUROC vs bare" in result.output  # the evidence table follows
    assert load_dataset(mk).text.sizes == {"model": 1, "cell": 4, "condition": 4}
    result = _run("plot", str(sub), str(dec), str(mk), "--out-dir", str(tmp_path / "figs"))
    assert result.exit_code == 0, result.output
    # substitute: kl_by_layer and controls; decompose: decomposition; markers: markers and evidence
    assert sorted(p.name for p in (tmp_path / "figs").glob("*.png")) == [
        "decompose-decomposition.png", "markers-evidence.png", "markers-markers.png", "substitute-controls.png",
        "substitute-kl_by_layer.png"]


def test_experiment_commands_run_their_own_capture(tiny_dirs, tiny_grid_file, tmp_path):
    out = tmp_path / "sub.nc"
    result = _run("substitute", "--model", str(tiny_dirs["qwen2"]), "--dtype", "float32", "--grid", str(tiny_grid_file),
                  "--positions", "p_last", "--cells", "yoda__haiku", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert list(ds.layer.values) == [1, 2, 3]  # the paper's fractional grid for 4 layers
    assert ds.kl.sizes["cell"] == 1


@pytest.mark.parametrize(
    "command, args, expected",
    [
        ("substitute", ["--conditions", "additive,clamp"], "unknown substitution condition(s) ['clamp']"),
        ("markers", ["--layers", "1,2"], "markers takes one layer and one position"),
        ("markers", ["--patch-steps", "some"], "Invalid value for '--patch-steps'"),
    ],
)
def test_experiment_bad_input(tiny_dirs, tiny_grid_file, command, args, expected):
    result = CliRunner().invoke(main, [command, "--model", str(tiny_dirs["qwen2"]), "--grid", str(tiny_grid_file),
                                       "--no-progress", *args])
    assert result.exit_code != 0 and expected in result.output and "Traceback" not in result.output


def test_inject_and_knockout_commands(tiny_dirs, tiny_grid_file, tmp_path):
    base = ["--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--no-progress"]
    out = tmp_path / "inject.nc"
    result = _run("inject", *base, "--clamp-layers", "2;1-3", "--site-layers", "2", "--positions", "p_last,g1",
                  "--patch-steps", "all", "--out", str(out))
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert list(ds.layer_set.values) == ["2", "1,2,3"] and list(ds.site_position.values) == ["p_last", "g1"]
    out = tmp_path / "knockout.nc"
    result = _run("knockout", *base, "--band", "0:2,all", "--heads", "0,1", "--n-tokens", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert list(ds.band.values) == ["0:2", "0:4"] and "any_marker" in ds
    assert (ds.kl.sel(condition="none").values == 0).all()
    bad = CliRunner().invoke(main, ["knockout", *base, "--band", "0:9"])
    assert bad.exit_code != 0 and "band '0:9' out of range" in bad.output


def test_ndif_host_local_runs_the_remote_path_with_the_same_numbers(tiny_dirs, tiny_grid_file, tmp_path):
    base = ["substitute", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--positions", "p_last",
            "--layers", "2", "--no-progress"]
    assert _run(*base, "--out", str(tmp_path / "a.nc")).exit_code == 0
    result = _run(*base, "--ndif-host", "local", "--out", str(tmp_path / "b.nc"))
    assert result.exit_code == 0, result.output
    a, b = load_dataset(tmp_path / "a.nc"), load_dataset(tmp_path / "b.nc")
    assert abs(a.kl - b.kl).max() < 1e-6
    bad = CliRunner().invoke(main, [*base, "--ndif-host", "http://127.0.0.1:1"])
    assert bad.exit_code != 0 and "--ndif-host needs --remote" in bad.output


def test_reproduce_writes_every_dataset_and_figure(tiny_dirs, tiny_grid_file, tmp_path):
    result = _run("reproduce", "--model", str(tiny_dirs["qwen2"]), "--dtype", "float32", "--grid", str(tiny_grid_file),
                  "--out-dir", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    for experiment in ("capture", "decompose", "substitute", "markers", "inject", "knockout"):
        path = tmp_path / f"{experiment}-tiny.nc"
        assert path.name in names and load_dataset(path).attrs["completed"] == 1
    # one figure per experiment but capture, substitute's two (kl_by_layer, controls) and markers'
    # two (markers, evidence); these tiny random models barely react to a persona, so reproduce
    # skips their head sweep and says so
    assert sum(n.endswith(".png") for n in names) == 7
    assert "heads: skipped" in result.output and not (tmp_path / "heads-tiny.nc").exists()
    assert (tmp_path / "MANIFEST.json").exists()
    # the report is written before the manifest, which lists it with its current hash
    import hashlib
    import json

    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    page = (tmp_path / "index.html").read_bytes()
    assert manifest["files"]["index.html"] == hashlib.sha256(page).hexdigest()
    # one section per result file, after the folder's findings
    assert page.count(b"<section ") - page.count(b'<section id="findings"') == sum(n.endswith(".nc") for n in names)


def test_run_executes_a_spec_file(tiny_dirs, tiny_grid_file, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"out_dir: {tmp_path / 'out'}\n"
        f"common: {{model: {tiny_dirs['llama']}}}\n"
        "steps:\n"
        f"  - {{command: capture, grid: {tiny_grid_file}, positions: 'p_last,g1', out: cap.nc}}\n"
        "  - {command: substitute, capture: cap.nc, layers: '1,2', positions: 'p_last,g1', out: sub.nc}\n"
        "  - {command: inject, capture: cap.nc, positions: p_last, site-layers: '1', out: inj.nc}\n"
        "  - {command: plot, results: sub.nc}\n"
    )
    result = _run("run", str(spec), "--no-progress")
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / "out" / "sub.nc").kl.sizes["layer"] == 2
    assert (tmp_path / "out" / "sub-kl_by_layer.png").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {command: train}\n")
    result = CliRunner().invoke(main, ["run", str(bad)])
    assert result.exit_code != 0 and "step 1 has command 'train'" in result.output
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"out_dir: {tmp_path / 'out'}\nsteps:\n  - {{command: inject, capture: cap.nc, out: x.nc}}\n")
    result = CliRunner().invoke(main, ["run", str(missing), "--no-progress"])
    assert result.exit_code != 0 and "the capture has no position ['p_user_last', 'g2']" in result.output
