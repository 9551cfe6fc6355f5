"""Reliability: results are never lost or silently replaced, never computed on a stale input, and
bad input gives one clear line (see docs/reliability.md, whose table these tests follow)."""

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nnsight_persona.models import loading as models
from nnsight_persona.cli import main
from nnsight_persona.studies.xu2026 import capture, inject, substitute
from nnsight_persona.storage.store import load_dataset, save_dataset
from tiny_models import build_tiny_model


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *expected):
    """A refused command: non-zero exit through click (no unhandled exception), and one `Error:`
    line, the last one, naming what was expected."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for text in expected:
        assert text in errors[0], result.output


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def forbid_model_load(monkeypatch):
    """From now on, loading model weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.fixture
def no_model_load(monkeypatch):
    forbid_model_load(monkeypatch)


@pytest.fixture
def base(tiny_dirs, tiny_grid_file):
    return ["--model", tiny_dirs["llama"], "--grid", tiny_grid_file, "--no-progress"]


def _sub(base, out, *extra):
    return invoke("substitute", *base, "--layers", "2", "--positions", "p_last", "--conditions", "additive,oracle",
                  "--out", out, *extra)


# ---------------------------------------------------------------- concurrent runs, temp files


def _save_many(path, value, n, errors):
    import xarray as xr

    try:
        for _ in range(n):
            save_dataset(xr.Dataset({"x": ("a", np.full(200, value))}, attrs={"completed": 1}), path)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        errors.put(repr(exc))


def test_concurrent_saves_to_one_path_never_collide(tmp_path):
    """Two processes replacing one file: unique temp names, so neither fails and the file is
    always one of the two complete writes."""
    path = tmp_path / "x.nc"
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_save_many, args=(path, v, 25, errors)) for v in (1.0, 2.0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert errors.empty(), errors.get()
    assert float(load_dataset(path).x[0]) in (1.0, 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["x.nc"]  # no temp file left behind


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(base, tmp_path, monkeypatch):
    import cli_child

    out = tmp_path / "sub.nc"
    args = ["substitute", *base, "--layers", "2", "--positions", "p_last", "--out", out]
    first = cli_child.start(args, model=str(base[1]), block_in_window_kl=True)
    try:
        assert first.wait_ready(120), "the first run never started computing"
        forbid_model_load(monkeypatch)
        begin = time.monotonic()
        assert_one_line_error(invoke(*args), f"PID {first.pid}", str(out))
        assert time.monotonic() - begin < 10  # at once, not after a computation
    finally:
        first.process.kill()
        first.process.join()
    monkeypatch.undo()
    assert invoke(*args).exit_code == 0  # the killed run's lock went with it


# ---------------------------------------------------------------- what is already at --out


def test_a_finished_result_of_the_same_computation_is_reused(base, tmp_path, monkeypatch):
    out = tmp_path / "sub.nc"
    assert _sub(base, out).exit_code == 0
    before = digest(out)
    forbid_model_load(monkeypatch)
    result = _sub(base, out, "--batch-size", "3")  # batch size does not change the numbers
    assert result.exit_code == 0, result.output
    assert "already done" in result.output and "additive" in result.output  # its table is still shown
    assert digest(out) == before


@pytest.mark.parametrize("other", [
    ["substitute", "--layers", "1"],            # another spec
    ["markers", "--layers", "2"],               # another experiment
    ["substitute", "--dtype", "bfloat16"],     # other numerics
])
def test_anything_else_at_out_is_refused_unless_overwrite(base, tmp_path, other, monkeypatch):
    out = tmp_path / "sub.nc"
    assert _sub(base, out).exit_code == 0
    before = digest(out)
    command, *opts = other
    args = [command, *base, "--positions", "p_last", "--out", out, *opts]
    if command == "markers":
        args += ["--n-tokens", "2"]
    elif "--layers" not in opts:
        args += ["--layers", "2"]
    forbid_model_load(monkeypatch)
    assert_one_line_error(invoke(*args), str(out), "--overwrite")
    assert digest(out) == before
    monkeypatch.undo()
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_dataset(out).attrs["experiment"] == command and load_dataset(out).attrs["completed"] == 1


def test_a_result_of_other_weights_is_neither_reused_nor_resumed(tiny_grid_file, tmp_path):
    model_dir = build_tiny_model("llama", tmp_path / "model", seed=1)
    out = tmp_path / "sub.nc"
    args = ["substitute", "--model", model_dir, "--grid", tiny_grid_file, "--layers", "2", "--positions", "p_last",
            "--conditions", "additive,oracle", "--out", out, "--no-progress"]
    assert invoke(*args).exit_code == 0
    for finished in (1, 0):
        ds = load_dataset(out)
        ds.attrs["completed"] = finished
        save_dataset(ds, out)
        build_tiny_model("llama", model_dir, seed=2 + finished)  # the folder's weights change
        assert_one_line_error(invoke(*args), str(out), "model weights", "--overwrite")
        result = invoke(*args, "--overwrite")
        assert result.exit_code == 0 and "resuming" not in result.output, result.output
        assert abs(load_dataset(out).kl.sel(condition="oracle")).max() < 1e-5


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4, b"not a netCDF file"],
                         ids=["empty", "hdf-garbage", "text"])
def test_an_unreadable_file_at_out_is_refused_unless_overwrite(base, tmp_path, content, no_model_load):
    out = tmp_path / "sub.nc"
    out.write_bytes(content)
    assert_one_line_error(_sub(base, out), str(out), "--overwrite")
    assert out.read_bytes() == content


def test_an_interrupted_overwrite_keeps_the_finished_file(base, tmp_path, monkeypatch):
    out = tmp_path / "sub.nc"
    assert _sub(base, out).exit_code == 0
    before = digest(out)
    real, calls = substitute.window_kl_against, {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(substitute, "window_kl_against", interrupted)
    result = invoke("substitute", *base, "--layers", "1,2,3", "--positions", "p_last,g1", "--batch-size", "2",
                    "--out", out, "--overwrite")
    assert result.exit_code == 130 and "previous finished result" in result.output, result.output
    assert digest(out) == before and load_dataset(out).attrs["completed"] == 1


def test_run_spec_twice_recomputes_nothing(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"out_dir: {tmp_path / 'out'}\ncommon: {{model: {tiny_dirs['llama']}}}\nsteps:\n"
        f"  - {{command: capture, grid: {tiny_grid_file}, layers: '1,2', positions: p_last, out: cap.nc}}\n"
        "  - {command: substitute, capture: cap.nc, layers: '1,2', positions: p_last, out: sub.nc}\n"
        "  - {command: decompose, capture: cap.nc, out: dec.nc}\n"
    )
    assert invoke("run", spec, "--no-progress").exit_code == 0
    digests = {p.name: digest(p) for p in (tmp_path / "out").glob("*.nc")}
    forbid_model_load(monkeypatch)
    result = invoke("run", spec, "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.output.count("already done") == 3
    assert {p.name: digest(p) for p in (tmp_path / "out").glob("*.nc")} == digests


def _interrupt_inject_after_one_batch(monkeypatch):
    real = inject.kl_in_sessions

    def interrupted(*a, **k):
        for i, item in enumerate(real(*a, **k)):
            if i == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(inject, "kl_in_sessions", interrupted)
    return real


def test_reproduce_writes_outside_artifacts_and_resumes_step_by_step(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "--model", tiny_dirs["qwen2"], "--dtype", "float32", "--grid", tiny_grid_file,
            "--no-progress"]
    # 1. interrupted inside inject: the steps before it are finished, inject is kept unfinished
    real = _interrupt_inject_after_one_batch(monkeypatch)
    result = invoke(*args)
    assert result.exit_code == 130, result.output
    assert not (tmp_path / "artifacts").exists()
    [folder] = {p.parent for p in tmp_path.glob("runs/**/*.nc")}
    assert load_dataset(folder / "inject-tiny.nc").attrs["completed"] == 0
    finished = {p.name: digest(p) for p in folder.glob("*.nc") if p.name != "inject-tiny.nc"}
    assert sorted(finished) == ["capture-tiny.nc", "decompose-tiny.nc", "markers-tiny.nc", "substitute-tiny.nc"]
    # 2. the rerun resumes inject and computes only what is missing
    monkeypatch.setattr(inject, "kl_in_sessions", real)
    reads = {"n": 0}
    real_read = capture.read_residuals

    def counted(*a, **k):
        reads["n"] += 1
        return real_read(*a, **k)

    monkeypatch.setattr(capture, "read_residuals", counted)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert reads["n"] == 0 and "resuming" in result.output
    assert all(digest(folder / name) == d for name, d in finished.items())
    for name in ("inject-tiny.nc", "knockout-tiny.nc"):
        assert load_dataset(folder / name).attrs["completed"] == 1
    assert len(list(folder.glob("*.png"))) == 7  # substitute and markers (markers, evidence) draw two figures
    done = {p.name: digest(p) for p in folder.iterdir()}
    # 3. a finished folder: nothing to do, not even loading the model
    forbid_model_load(monkeypatch)
    result = invoke(*args)
    assert result.exit_code == 0 and result.output.count("already done") == 6, result.output
    assert {p.name: digest(p) for p in folder.iterdir()} == done


def test_an_interrupted_reproduce_overwrite_never_degrades_a_finished_file(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    args = ["reproduce", "--model", tiny_dirs["llama"], "--grid", tiny_grid_file, "--out-dir", tmp_path,
            "--no-progress"]
    assert invoke(*args).exit_code == 0
    before = digest(tmp_path / "inject-tiny.nc")
    _interrupt_inject_after_one_batch(monkeypatch)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 130, result.output
    assert digest(tmp_path / "inject-tiny.nc") == before
    assert (tmp_path / "inject-tiny-gap_closed.png").exists()


# ---------------------------------------------------------------- a capture is the right input


def test_a_capture_of_other_weights_is_refused(tiny_grid_file, tmp_path, monkeypatch):
    model_dir = build_tiny_model("llama", tmp_path / "model", seed=1)
    cap = tmp_path / "cap.nc"
    assert invoke("capture", "--model", model_dir, "--grid", tiny_grid_file, "--layers", "2", "--positions", "p_last",
                  "--out", cap, "--no-progress").exit_code == 0
    build_tiny_model("llama", model_dir, seed=2)  # the folder's weights change
    forbid_model_load(monkeypatch)
    result = invoke("substitute", "--capture", cap, "--layers", "2", "--positions", "p_last", "--out",
                    tmp_path / "sub.nc", "--no-progress")
    assert_one_line_error(result, str(cap), "weights")
    assert not (tmp_path / "sub.nc").exists()


def test_options_that_disagree_with_the_capture_are_refused(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    cap = tmp_path / "cap.nc"
    assert invoke("capture", "--model", tiny_dirs["llama"], "--grid", tiny_grid_file, "--layers", "2",
                  "--positions", "p_last", "--out", cap, "--no-progress").exit_code == 0
    other_grid = tmp_path / "other.yaml"
    other_grid.write_text(tiny_grid_file.read_text().replace("Recommend a book.", "Recommend a film."))
    run = lambda *extra: invoke("substitute", "--capture", cap, "--layers", "2", "--positions", "p_last",
                                "--out", tmp_path / "sub.nc", "--no-progress", *extra)
    forbid_model_load(monkeypatch)
    assert_one_line_error(run("--model", tiny_dirs["qwen2"]), "--model", str(cap))
    assert_one_line_error(run("--grid", other_grid), "--grid", str(cap))
    assert_one_line_error(run("--grid", "toy"), "--grid", str(cap))
    assert_one_line_error(run("--dtype", "bfloat16"), "--dtype", str(cap))
    monkeypatch.undo()
    same = run("--model", tiny_dirs["llama"], "--grid", tiny_grid_file, "--dtype", "float32")
    assert same.exit_code == 0, same.output  # agreeing options are fine


def test_a_capture_without_the_cells_is_refused_before_the_model_loads(base, tmp_path, monkeypatch):
    cap = tmp_path / "cap.nc"
    assert invoke("capture", *base, "--cells", "yoda__haiku", "--layers", "2", "--positions", "p_last",
                  "--out", cap).exit_code == 0
    forbid_model_load(monkeypatch)
    result = invoke("substitute", "--capture", cap, "--layers", "2", "--positions", "p_last", "--out",
                    tmp_path / "sub.nc", "--no-progress")
    assert_one_line_error(result, str(cap), "engineer__book", "--cells")


# ---------------------------------------------------------------- one-line errors, before any model work


@pytest.mark.parametrize("args, expected", [
    (["--grid", "/nonexistent/folder/grid.yaml"], ["/nonexistent/folder/grid.yaml"]),
    (["--grid", "xu*"], ["'xu*'"]),
    (["--cells", "yoda__haiku,yoda__haiku"], ["yoda__haiku", "twice"]),
], ids=["missing-absolute-grid", "grid-pattern", "duplicate-cell"])
def test_bad_options_fail_in_one_line_before_the_model_loads(tiny_dirs, tiny_grid_file, tmp_path, args, expected, no_model_load):
    opts = {"--model": str(tiny_dirs["llama"]), "--grid": str(tiny_grid_file), "--out": str(tmp_path / "x.nc")}
    for key, value in zip(args[::2], args[1::2]):
        opts[key] = value
    result = invoke("substitute", "--no-progress", *[x for kv in opts.items() for x in kv])
    assert_one_line_error(result, *expected)
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.parametrize("command", ["capture", "decompose", "substitute", "markers", "inject"])
@pytest.mark.parametrize("args, expected", [
    (["--layers", "99"], ["[99]", "0..4"]),
    (["--positions", "foo"], ["foo"]),
], ids=["layers", "positions"])
def test_layers_and_positions_are_checked_before_the_model_loads(base, tmp_path, command, args, expected, no_model_load):
    assert_one_line_error(invoke(command, *base, "--out", tmp_path / "x.nc", *args), *expected)
    assert not (tmp_path / "x.nc").exists()


@pytest.mark.parametrize("command, args, expected", [
    ("markers", ["--conditions", "clean,bogus"], "['bogus']"),
    ("inject", ["--conditions", "host,bogus"], "['bogus']"),
    ("substitute", ["--conditions", "bogus"], "['bogus']"),
    ("knockout", ["--band", "0:9"], "0:9"),
])
def test_experiment_options_are_checked_before_the_model_loads(base, tmp_path, command, args, expected, no_model_load):
    assert_one_line_error(invoke(command, *base, "--out", tmp_path / "x.nc", *args), expected)


@pytest.fixture
def bad_files(tmp_path, tiny_grid_file):
    real = Path(__file__).parent.parent / "artifacts" / "toy" / "capture-toy.nc"
    files = {
        "empty": b"",
        "garbage": os.urandom(2048),
        "truncated": real.read_bytes()[:4096],
    }
    for name, data in files.items():
        (tmp_path / f"{name}.nc").write_bytes(data)
    return {name: tmp_path / f"{name}.nc" for name in files}


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize("command", ["substitute --capture", "decompose --capture", "plot", "compare"])
def test_an_unreadable_result_file_is_one_line(bad_files, tmp_path, command, kind):
    bad = bad_files[kind]
    result = invoke(*command.split(), bad, *(["--out", tmp_path / "o.nc"] if "--capture" in command else []))
    assert_one_line_error(result, str(bad))


def test_an_output_that_cannot_be_written_fails_before_the_model_loads(base, tmp_path, no_model_load):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_one_line_error(_sub(base, a_file / "sub.nc"), str(a_file))
    if Path("/sys").is_dir():
        assert_one_line_error(_sub(base, "/sys/nnsight-persona-test/sub.nc"), "/sys/nnsight-persona-test")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_one_line_error(_sub(base, locked / "sub.nc"), str(locked))


def test_ctrl_c_in_a_built_in_capture_names_no_capture_file(base, tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(capture, "read_residuals", interrupt)
    out = tmp_path / "sub.nc"
    result = _sub(base, out)
    assert result.exit_code == 130, result.output
    assert "capture file" not in result.output and "interrupted" in result.output
    assert not out.exists()


@pytest.mark.parametrize("text, expected", [
    ("steps:\n  - {command: capture\n", "not valid YAML"),
    ("steps: []\n", "no steps"),
])
def test_bad_spec_files_are_one_line(tmp_path, text, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert_one_line_error(invoke("run", spec), str(spec), expected)


def test_plot_skips_files_without_figures_and_draws_the_rest(tmp_path):
    toy = Path(__file__).parent.parent / "artifacts" / "toy"
    files = [toy / "capture-toy.nc", toy / "substitute-toy.nc"]
    result = invoke("plot", *files, "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "capture-toy.nc" in result.output and "no figures" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["substitute-toy-controls.png", "substitute-toy-kl_by_layer.png"]
