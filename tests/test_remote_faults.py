"""Remote runs: retries with backoff, a clean stop that keeps the finished part, traffic counts."""

import dataclasses

import pytest
from click.testing import CliRunner

from nnsight_persona.core import tracing
from nnsight_persona.cli import main
from nnsight_persona.core.errors import RemoteFailure
from nnsight_persona.studies.xu2026 import capture, substitute
from nnsight_persona.core.grids import load_grid
from nnsight_persona.storage.store import load_dataset
from nnsight_persona.core.traffic import metered


class FakeLoaded:
    remote = "http://127.0.0.1:9"


def test_remote_errors_are_retried_with_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    calls = {"n": 0}

    @tracing.retried
    def flaky(loaded):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("connection refused")
        return "result"

    assert flaky(FakeLoaded()) == "result" and calls["n"] == 3 and sleeps == [2.0, 4.0]

    @tracing.retried
    def down(loaded):
        raise ConnectionError("connection refused")

    with pytest.raises(RemoteFailure, match="failed 4 times \\(ConnectionError: connection refused\\)"):
        down(FakeLoaded())
    assert sleeps[-3:] == [2.0, 4.0, 8.0]


def test_local_errors_are_not_retried():
    calls = {"n": 0}

    @tracing.retried
    def broken(loaded):
        calls["n"] += 1
        raise ConnectionError("no")

    with pytest.raises(ConnectionError):
        broken(type("Simulated", (), {"remote": "local"})())
    assert calls["n"] == 1


def test_a_failed_remote_run_keeps_its_finished_part(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    out = tmp_path / "sub.nc"
    real = substitute.window_kl_against
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RemoteFailure("the remote run failed 4 times (RemoteError: 503 Service Unavailable)")
        return real(*a, **k)

    monkeypatch.setattr(substitute, "window_kl_against", failing)
    args = ["substitute", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--layers", "1,3",
            "--batch-size", "4", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "503 Service Unavailable" in result.output and "run the same command again to resume" in result.output
    ds = load_dataset(out)
    assert ds.attrs["completed"] == 0 and "503" in ds.attrs["stopped_by"] and ds.kl.notnull().any()


def test_traffic_is_counted_per_request(loaded_models, tiny_grid_file):
    from nnsight.schema.request import RequestModel

    original = RequestModel.__dict__["serialize"]
    remote = dataclasses.replace(loaded_models["qwen2"], remote="local")
    grid = load_grid(tiny_grid_file)
    with metered() as traffic:
        ds = capture.run(remote, grid, capture.CaptureSpec(grid="tiny", layers=(1,), batch_size=8), progress=False)
    # 4 cells: one generation request (4 rows), then 16 capture rows in 2 batches of 8.
    assert traffic.requests == 3 and traffic.bytes_sent > 0
    # The simulation counts what a server would send back: at least the residuals, float32.
    assert traffic.bytes_received >= ds.resid.size * 4
    assert ds.attrs["completed"] == 1
    assert RequestModel.__dict__["serialize"] is original  # restored


def test_cli_reports_backend_and_traffic(tiny_dirs, tiny_grid_file, tmp_path):
    out = tmp_path / "sub.nc"
    result = CliRunner().invoke(main, ["substitute", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file),
                                       "--layers", "2", "--positions", "p_last", "--ndif-host", "local",
                                       "--batch-size", "8", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert ds.attrs["backend"] == "local simulation of the remote path"
    # The clean continuation: 1 generation request (token ids); the sweep: 24 patches / 8 = 3 batches
    # travelling together in one session with the capture passes of their cells, one request.
    assert ds.attrs["remote_requests"] == 1 + 1 and ds.attrs["remote_bytes_sent"] > 0


def test_the_api_key_is_never_written(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    secret = "ndif-key-that-must-not-leak-1234"
    monkeypatch.setenv("NDIF_API_KEY", secret)
    out = tmp_path / "cap.nc"
    result = CliRunner().invoke(main, ["capture", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file),
                                       "--layers", "1", "--ndif-host", "local", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    assert secret.encode() not in out.read_bytes()
    bad = CliRunner().invoke(main, ["capture", "--model", str(tmp_path / "missing"), "--remote"])
    assert bad.exit_code != 0 and secret not in bad.output
