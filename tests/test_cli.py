"""The command line end to end through click's CliRunner, on a tiny model saved to disk."""

import pytest
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.store import load_dataset


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
