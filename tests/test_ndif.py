"""Experiments against a REAL NDIF server on loopback equal the same experiments run here; the
remote-native sweeps (substitute, inject) send nothing that grows with the model's width; and
`plan` prices every experiment's requests and bytes as the server sees them.

Not in the default suite (`pytest -m ndif` selects it). Needs the server's venv, made once by
`python scripts/ndif_local.py install`; without it every test here is skipped. The server is
started for the session (or reused if `scripts/ndif_local.py start` already runs it, and then left
running) and stopped at the end. Server and client share this machine's disk, so a tiny model
written to a temp folder is served under that folder's path as its model key. See docs/remote.md.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import MAX_WIDE_PARAMS, build_tiny_model
from tolerances import RESIDUAL, assert_close_per_vector
from traffic_log import record

from nnsight_persona.studies.xu2026 import capture, inject, knockout, substitute
from nnsight_persona.core.grids import load_grid
from nnsight_persona.models.loading import load_model

pytestmark = pytest.mark.ndif

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ndif_local.py"
HOST = "http://127.0.0.1:8001"


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


class Server:
    """The loopback NDIF server; `ensure()` (re)starts it when it is not answering."""

    def __init__(self):
        self.started_here = False

    def running(self) -> bool:
        return _script("status", timeout=30).returncode == 0

    def ensure(self) -> None:
        if self.running():
            return
        t0 = time.time()
        out = _script("start")
        if out.returncode != 0:
            pytest.skip(f"the local NDIF server did not start ({SCRIPT.name} start exited {out.returncode}): "
                        + (out.stdout + out.stderr)[-1500:])
        self.started_here = True
        self.start_seconds = time.time() - t0

    def stop(self) -> subprocess.CompletedProcess:
        return _script("stop", timeout=120)


@pytest.fixture(scope="session")
def ndif_server():
    status = _script("status", timeout=30)
    if status.returncode == 3:
        pytest.skip(f"no local NDIF server installed: run `python scripts/{SCRIPT.name} install` once")
    server = Server()
    server.ensure()
    yield server
    if server.started_here:
        out = server.stop()
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="session")
def ndif_model_dir(tmp_path_factory):
    return build_tiny_model("gemma2", tmp_path_factory.mktemp("ndif") / "gemma2")


@pytest.fixture(scope="session")
def pair(ndif_server, ndif_model_dir):
    """The same tiny model loaded here and as a client of the loopback server."""
    local = load_model(str(ndif_model_dir), dtype="float32", remote=False)
    remote = load_model(str(ndif_model_dir), dtype="float32", remote=HOST)
    return local, remote


def _equal(a, b, var):
    if a[var].dims[-1:] == ("hidden",):  # residuals by two routes (the server's, this process's)
        assert_close_per_vector(a[var].values, b[var].values, RESIDUAL, what=var)
    elif var.startswith("norm_"):  # norms of residual vectors, one per (layer, cell)
        assert_close_per_vector(a[var].values[..., None], b[var].values[..., None], RESIDUAL, what=var)
    elif a[var].dtype.kind in "fc":  # a default tiny model's KLs and scores: all below ~2e-3, one scale
        np.testing.assert_allclose(a[var].values, b[var].values, atol=1e-5, rtol=0, err_msg=var)
    else:
        assert (a[var].values == b[var].values).all(), var


@pytest.mark.parametrize(
    "module, make_spec, variables",
    [
        (capture, lambda: capture.CaptureSpec(grid="tiny", layers=(0, 2, 4)), ["resid", "continuation_ids"]),
        (substitute, lambda: substitute.SubstituteSpec(grid="tiny", layers=(1, 3), positions=("p_last", "g2")), ["kl"]),
        (inject, lambda: inject.InjectSpec(grid="tiny", layer_sets=((2,), (1, 3)), site_layers=(2,)),
         ["kl", "kl_site", "norm_clean", "norm_host", "norm_injected"]),
        (inject, lambda: inject.InjectSpec(grid="tiny", layer_sets=((2,), (1, 3)), patch_steps="all"),
         ["kl", "norm_injected"]),
        (knockout, lambda: knockout.KnockoutSpec(grid="tiny", bands=((0, 2), (0, 4)), n_tokens=5), ["kl", "text"]),
    ],
    ids=["capture", "substitute", "inject", "inject-all-steps", "knockout"],
)
def test_ndif_equals_local(ndif_server, pair, tiny_grid_file, module, make_spec, variables):
    ndif_server.ensure()  # the fault test below stops the server
    local, remote = pair
    grid = load_grid(tiny_grid_file)
    a = module.run(local, grid, make_spec(), progress=False)
    b = module.run(remote, grid, make_spec(), progress=False)
    assert a.attrs["completed"] == b.attrs["completed"] == 1, b.attrs.get("stopped_by")
    for var in variables:
        _equal(a, b, var)




def test_ndif_session_carries_unsaved_values_between_traces(ndif_server, pair):
    """What the remote-native sweeps rest on, the smallest case: residuals read in three traces of
    one session, combined between traces, written in a fourth; a numpy-seeded direction drawn
    inside the block; only the two saved reductions come back, in one request."""
    import torch

    from nnsight_persona.core.traffic import metered

    ndif_server.ensure()
    prompts = [torch.tensor([[5, 6, 7, 8]]), torch.tensor([[9, 10, 11, 12]]), torch.tensor([[13, 14, 15, 16]])]

    def run(loaded):
        lm = loaded.lm
        with metered() as traffic:
            with lm.session(remote=loaded.remote or False):
                residuals = []  # never saved
                for ids in prompts:
                    with lm.trace(ids):
                        residuals.append(lm.model.layers[1].output[:, -1].clone())
                vector = residuals[0] + (residuals[1] - residuals[2])
                with lm.trace(prompts[2]):
                    seeded = np.random.default_rng([1, 2, 3]).standard_normal(vector.shape[-1]).astype(np.float32)
                    lm.model.layers[1].output[:, -1] = vector + torch.from_numpy(seeded)
                    score = lm.output.logits[:, -1].log_softmax(-1).sum().save()
                with lm.trace(prompts[2]):
                    clean = lm.output.logits[:, -1].log_softmax(-1).sum().save()
        return float(score), float(clean), traffic

    local, remote = pair
    want, _, _ = run(local)
    got, clean, traffic = run(remote)
    assert abs(got - want) <= 1e-5 * abs(want) and abs(got - clean) > 1e-3
    assert traffic.requests == 1


@pytest.fixture(scope="session")
def wide_remote(ndif_server, tmp_path_factory):
    """Two tiny gemma2 models that differ only in hidden size (64, 1024), served by the loopback server."""
    root = tmp_path_factory.mktemp("ndif-wide")
    return {width: load_model(str(build_tiny_model("gemma2", root / str(width), hidden_size=width,
                                                    max_params=MAX_WIDE_PARAMS)), dtype="float32", remote=HOST)
            for width in (64, 1024)}


@pytest.mark.parametrize("experiment", ["substitute", "inject"])
def test_ndif_what_travels_does_not_grow_with_the_width(ndif_server, wide_remote, tiny_grid_file, experiment):
    """As tests/test_native.py, on the real server, with nnsight's default zstd compression."""
    import nnsight_persona

    ndif_server.ensure()
    options = {"substitute": {"layers": "1,3", "positions": "all"}, "inject": {"patch_steps": "all"}}[experiment]
    attrs = {}
    for width, model in wide_remote.items():
        attrs[width] = getattr(nnsight_persona, experiment)(model, grid=str(tiny_grid_file), batch_size=8,
                                                            progress=False, **options).attrs
        record(kind="width", backend="loopback NDIF (zstd)", experiment=experiment, width=width,
               requests=attrs[width]["remote_requests"], sent=attrs[width]["remote_bytes_sent"],
               received=attrs[width]["remote_bytes_received"])
    assert attrs[64]["remote_requests"] == attrs[1024]["remote_requests"]
    ratios = {key: max(attrs[64][key], attrs[1024][key]) / min(attrs[64][key], attrs[1024][key])
              for key in ("remote_bytes_sent", "remote_bytes_received")}
    assert all(r < 1.2 for r in ratios.values()), (ratios, attrs)


# Each experiment's options, small enough for a few requests on the tiny model.
PLANNED = {
    "capture": {"layers": "1,3"},
    "substitute": {"layers": "1,3", "positions": "p_last,g2"},
    "markers": {"layers": "2", "n_tokens": 6, "patch_steps": "all"},
    "inject": {"patch_steps": "all"},
    "knockout": {"bands": "0:2,0:4", "n_tokens": 5},
    "heads": {"band": "0:2"},
}


@pytest.mark.parametrize("experiment", sorted(PLANNED))
def test_ndif_plan_equals_the_measured_run(ndif_server, pair, ndif_model_dir, tiny_grid_file, monkeypatch, experiment):
    """`plan` counts the bytes nnsight serializes (uncompressed): measured with the client's
    compression off, the server's requests and bytes each way equal the plan's (requests exactly,
    bytes within 20%). The same run with compression on (nnsight's default) is recorded beside it."""
    import nnsight_persona
    from nnsight import CONFIG

    from nnsight_persona.studies.xu2026.plan import plan

    ndif_server.ensure()
    _, remote = pair
    options = PLANNED[experiment]
    planned = plan(experiment, str(ndif_model_dir), grid=str(tiny_grid_file), batch_size=8, remote=True,
                   ndif_host=HOST, dtype="float32", **options)["total"]
    measured = {}
    for compress in (False, True):
        monkeypatch.setattr(CONFIG.API, "COMPRESS", compress)
        measured[compress] = getattr(nnsight_persona, experiment)(remote, grid=str(tiny_grid_file), batch_size=8,
                                                                  progress=False, **options).attrs
    raw, zstd = measured[False], measured[True]
    record(kind="plan", backend="loopback NDIF", experiment=experiment, requests_plan=planned["requests"],
           requests=raw["remote_requests"], up_plan=planned["bytes_up"], up=raw["remote_bytes_sent"],
           down_plan=planned["bytes_down"], down=raw["remote_bytes_received"], up_zstd=zstd["remote_bytes_sent"],
           down_zstd=zstd["remote_bytes_received"])
    assert planned["requests"] == raw["remote_requests"] == zstd["remote_requests"] > 0
    for plan_key, run_key in (("bytes_up", "remote_bytes_sent"), ("bytes_down", "remote_bytes_received")):
        ratio = planned[plan_key] / raw[run_key]
        assert 0.8 <= ratio <= 1.2, f"{plan_key}: plan {planned[plan_key]} vs measured {raw[run_key]}"
    assert zstd["remote_bytes_sent"] < raw["remote_bytes_sent"]  # the compression really was on


@pytest.mark.parametrize(
    "when",
    [
        "between_requests",
        "mid_request",
    ],
)
def test_ndif_server_stopped_fails_cleanly_then_resumes(ndif_server, tmp_path, tiny_grid_file, monkeypatch, when):
    """Stop the whole server during a run: the run ends, in bounded time, as an unfinished result that
    says why (or one of the package's own errors), never a hang or a raw library exception; after a
    restart the run resumes from what it kept and ends equal to a local run.

    between_requests: the server is stopped before the run's second request is sent.
    mid_request: it is stopped while the first request waits for its model to be deployed."""
    from nnsight.intervention.backends.remote import RemoteBackend

    ndif_server.ensure()
    # A model the server has not seen: its first request waits seconds for a deployment.
    seed = 1 if when == "mid_request" else 2
    remote = load_model(str(build_tiny_model("gemma2", tmp_path / "fresh", seed=seed)), dtype="float32", remote=HOST)
    grid = load_grid(tiny_grid_file)
    calls: list[int] = []
    stopper: list[threading.Thread] = []
    stop_result: list[subprocess.CompletedProcess] = []
    original = RemoteBackend.request

    def request(self, *args, **kwargs):
        calls.append(1)
        if when == "mid_request" and len(calls) == 1:
            stopper.append(threading.Thread(target=lambda: stop_result.append(ndif_server.stop()), daemon=True))
            stopper[0].start()
        elif when == "between_requests" and len(calls) == 2:
            stop_result.append(ndif_server.stop())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RemoteBackend, "request", request)
    outcome: dict = {}

    def run():
        try:
            outcome["ds"] = capture.run(remote, grid, capture.CaptureSpec(grid="tiny", layers=(0, 2)), progress=False)
        except BaseException as exc:  # noqa: BLE001 - recorded and judged below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    worker.start()
    worker.join(timeout=240)
    elapsed = time.time() - t0
    assert not worker.is_alive(), "the run hung after the server was stopped"
    for t in stopper:
        t.join(timeout=120)
    assert stop_result, f"the server was never stopped: the run made {len(calls)} request(s)"
    assert stop_result[0].returncode == 0, stop_result[0].stdout + stop_result[0].stderr
    if "error" in outcome:
        exc = outcome["error"]
        from nnsight_persona.core.errors import PersonaError

        assert isinstance(exc, PersonaError), (
            f"unclean failure after {elapsed:.0f} s: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    else:
        ds = outcome["ds"]
        assert ds.attrs["completed"] == 0
        reason = ds.attrs.get("stopped_by", "")
        assert "remote" in reason.lower() and "fail" in reason.lower(), reason
        # Restart the server and resume: nothing that finished is lost or recomputed, and the
        # result equals a local run.
        monkeypatch.setattr(RemoteBackend, "request", original)
        ndif_server.ensure()
        spec = capture.CaptureSpec(grid="tiny", layers=(0, 2))
        resumed = capture.run(remote, grid, spec, progress=False, previous=ds)
        assert resumed.attrs["completed"] == 1
        local = capture.run(load_model(str(tmp_path / "fresh"), dtype="float32"), grid, spec, progress=False)
        assert_close_per_vector(resumed.resid.values, local.resid.values, RESIDUAL)
