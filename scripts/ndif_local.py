#!/usr/bin/env python3
"""Run a real NDIF server on loopback (127.0.0.1) for the `pytest -m ndif` test tier.

    python scripts/ndif_local.py install   # once: a server venv in .ndif/ (git-ignored), redis-server
    python scripts/ndif_local.py start     # redis, moto (S3), Ray head, controller, API on :8001
    python scripts/ndif_local.py status
    python scripts/ndif_local.py stop      # by recorded PIDs and the venv's process tree, TERM then KILL

The server is PyPI `ndif` 0.1.2 with nnsight 0.8.0 (ndif 0.1.2 calls an nnsight API that 0.8.1
removed; a 0.8.1 client talks to it fine), kept in its own venv so the project's environment is
untouched. There is no GPU: Ray is told it has one, and models are served by the CPU actor in
scripts/ndif_actor.py. Everything binds and talks to 127.0.0.1 only.

Only the standard library is used here, so any Python 3.11+ can run this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
STATE = Path(os.environ.get("NDIF_LOCAL_STATE", ROOT / ".ndif")).resolve()
VENV = STATE / "venv"
PY = VENV / "bin" / "python"
LOGS = STATE / "logs"
PIDS = STATE / "pids.json"
INSTALLED = STATE / "installed.json"
# Ray keeps unix sockets under its temp dir and their paths must stay short (< 108 bytes).
RAY_TMP = Path(tempfile.gettempdir()) / f"ndif-local-ray-{os.getuid()}"

HOST = "127.0.0.1"
API_PORT = 8001
REDIS_PORT = 6389  # not 6379, so a distribution's own redis service cannot collide
S3_PORT = 9000
RAY_PORT = 6385
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265
PORTS = (API_PORT, REDIS_PORT, S3_PORT, RAY_PORT, RAY_CLIENT_PORT, RAY_DASHBOARD_PORT)  # all on HOST
API_URL = f"http://{HOST}:{API_PORT}"
MARKER = "NDIF_LOCAL_SERVER_OF"  # set only in the environment of the processes `start` spawns

TORCH = "torch==2.13.0"
SERVER_DEPS = [
    "nnsight==0.8.0",
    "transformers==5.22.2",
    "pydantic",
    "redis",
    "click",
    "python-dotenv",
    "pyyaml",
    "boto3",
    "fastapi",
    "uvicorn[standard]",
    "gunicorn",
    "python-multipart",
    "ray[default]",
    "accelerate",
    "numpy",
    "zstandard",
    "peft",
    "moto[server]",
]
NDIF = "ndif==0.1.2"


def log(msg: str) -> None:
    print(f"[ndif_local] {msg}", flush=True)


def _run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------------- install


def redis_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def install(args) -> int:
    t0 = time.time()
    STATE.mkdir(parents=True, exist_ok=True)
    if redis_binary() is None:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            log("redis-server is missing: install it (Debian/Ubuntu: apt-get install redis-server) and rerun")
            return 1
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], env=env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"], env=env)
    if not PY.exists():
        # The venv takes this interpreter's version: 3.11 (see the module docstring).
        _run([sys.executable, "-m", "venv", VENV])
    pip = [PY, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first and pinned: unpinned, pip would pull a multi-GB CUDA build.
    _run(pip + [TORCH])
    _run(pip + [TORCH] + SERVER_DEPS)
    # ndif declares Python >= 3.12 but its modules run on 3.11; --no-deps keeps pip from
    # re-resolving (it would pick releases that need 3.12).
    _run(pip + ["--no-deps", "--ignore-requires-python", NDIF])
    check = (
        "import ndif, nnsight, ray, torch, moto; "
        "import ndif.services.api.app, ndif.services.ray.deployments.modeling.base; "
        "print(nnsight.__version__, ray.__version__, torch.__version__)"
    )
    out = subprocess.run([PY, "-c", check], check=True, capture_output=True, text=True,
                         env=_server_env()).stdout.strip()
    seconds = time.time() - t0
    size = _dir_size(VENV)
    INSTALLED.write_text(json.dumps({
        "ndif": NDIF, "versions (nnsight ray torch)": out, "python": str(PY),
        "seconds": round(seconds, 1), "venv_bytes": size,
    }, indent=1))
    log(f"installed in {seconds:.0f} s; venv {size / 2**30:.2f} GiB ({out})")
    return 0


def installed() -> bool:
    return INSTALLED.exists() and PY.exists() and redis_binary() is not None


# ------------------------------------------------------------------------------------------ start


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(key, None)
    env.update({
        "VIRTUAL_ENV": str(VENV),
        "PATH": f"{VENV / 'bin'}:{env.get('PATH', '')}",
        # The CPU actor module must be importable by every Ray worker.
        "PYTHONPATH": str(SCRIPTS),
        # Marks every process we start (Ray workers inherit it): stop finds them by it.
        MARKER: str(STATE),
        "NDIF_HOME": str(STATE / "home"),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray on 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
        "GRPC_ENABLE_FORK_SUPPORT": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "NDIF_CONTROLLER_SYNC_INTERVAL_S": "5",
        "NDIF_MODEL_IMPORT_PATH": "ndif_actor.CPUModelDeployment",
        "NDIF_DEFAULT_DTYPE": "float32",
        "NDIF_REDIS_URL": f"redis://{HOST}:{REDIS_PORT}",
        "NDIF_BROKER_URL": f"redis://{HOST}:{REDIS_PORT}",
        "NDIF_RAY_ADDRESS": f"ray://{HOST}:{RAY_CLIENT_PORT}",
        "RAY_ADDRESS": f"{HOST}:{RAY_PORT}",
        "NDIF_OBJECT_STORE_URL": f"http://{HOST}:{S3_PORT}",
        "NDIF_OBJECT_STORE_PUBLIC_URL": f"http://{HOST}:{S3_PORT}",
        # moto accepts any credentials; boto3 needs some.
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


def _get(path: str, timeout: float = 2.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(API_URL + path, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _load_pids() -> dict[str, int]:
    try:
        return json.loads(PIDS.read_text())
    except (OSError, ValueError):
        return {}


def _save_pid(name: str, pid: int) -> None:
    pids = _load_pids()
    pids[name] = pid
    PIDS.write_text(json.dumps(pids, indent=1))


def _spawn(name: str, cmd: list, env: dict) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log(f"starting {name}: " + " ".join(str(c) for c in cmd))
    with open(LOGS / f"{name}.log", "ab") as out:  # the child keeps its own copy of the handle
        p = subprocess.Popen([str(c) for c in cmd], env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=STATE, start_new_session=True)
    _save_pid(name, p.pid)
    return p


def _wait(what: str, ok, timeout: float, procs=()) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if ok():
            return
        for name, p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {LOGS / (name + '.log')}")
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {LOGS}")


def start(args) -> int:
    if not installed():
        log("not installed: run `python scripts/ndif_local.py install` first")
        return 2
    if _get("/ping")[0] == 200:
        log(f"already running at {API_URL}")
        return 0
    busy = [p for p in PORTS if _port_busy(p)]
    if busy:
        log(f"ports already in use on {HOST}: {busy}; stop whatever holds them (or `stop`) first")
        return 1
    t0 = time.time()
    PIDS.write_text("{}")
    (STATE / "home").mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    env = _server_env()
    try:
        _start_all(env, args.timeout)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"start failed: {exc}")
        for name in sorted(p.name for p in LOGS.glob("*.log")):
            tail = (LOGS / name).read_text(errors="replace").splitlines()[-15:]
            log(f"--- last lines of {name}:\n" + "\n".join(tail))
        stop(args)
        return 1
    log(f"NDIF is up at {API_URL} in {time.time() - t0:.0f} s")
    return 0


def _start_all(env: dict, timeout: float) -> None:
    bin_ = VENV / "bin"
    # 1. Redis (queues and status)
    redis_pid = STATE / "redis.pid"
    _run([redis_binary(), "--port", str(REDIS_PORT), "--bind", HOST, "--daemonize", "yes",
          "--pidfile", redis_pid, "--dir", STATE, "--save", "", "--appendonly", "no",
          "--logfile", LOGS / "redis.log", "--protected-mode", "yes"], env=env, cwd=STATE)
    _wait("redis", lambda: redis_pid.exists() and _port_busy(REDIS_PORT), 20)
    _save_pid("redis", int(redis_pid.read_text().strip()))
    # 2. S3 stand-in for large and non-blocking results
    moto = _spawn("moto", [bin_ / "moto_server", "-H", HOST, "-p", str(S3_PORT)], env)
    _wait("moto (S3)", lambda: _port_busy(S3_PORT), 60, [("moto", moto)])
    # 3. Ray head, with a declared GPU (models run on CPU in the actor)
    shutil.rmtree(RAY_TMP, ignore_errors=True)
    resources = json.dumps({"head": 10, "cuda_memory_bytes": 8_000_000_000,
                            "cpu_memory_bytes": 16_000_000_000})
    # Ray's CPUs are scheduling slots, not cores: every served model's actor holds one for as long as
    # it is deployed (scripts/ndif_actor.py). The test tier serves five tiny models (two of them for
    # the width test), and a model that finds no free slot waits for its deployment forever.
    ray = _spawn("ray", [
        bin_ / "ray", "start", "--head", "--block", f"--node-ip-address={HOST}", f"--port={RAY_PORT}",
        "--num-cpus=8", "--num-gpus=1", f"--resources={resources}",
        "--include-dashboard=true", f"--dashboard-host={HOST}", f"--dashboard-port={RAY_DASHBOARD_PORT}",
        f"--ray-client-server-port={RAY_CLIENT_PORT}", f"--temp-dir={RAY_TMP}", "--disable-usage-stats",
    ], env)
    _wait("Ray head", lambda: _port_busy(RAY_CLIENT_PORT) and _port_busy(RAY_DASHBOARD_PORT), 180,
          [("ray", ray)])
    # 4. The controller: starts a detached actor in Ray and exits.
    ctl = _spawn("controller", [PY, "-m", "ndif.services.ray.deployments.controller.controller"], env)
    _wait("controller", lambda: ctl.poll() is not None, 180)
    if ctl.returncode != 0:
        raise RuntimeError(f"controller exited with {ctl.returncode}; see {LOGS / 'controller.log'}")
    # 5. The API
    api = _spawn("api", [
        bin_ / "gunicorn", "--config", "python:ndif.services.api.gunicorn_conf",
        "--bind", f"{HOST}:{API_PORT}", "ndif.services.api.app:app",
    ], dict(env, NDIF_SERVICE="api"))
    _wait("API /ping", lambda: _get("/ping")[0] == 200, 120, [("api", api)])
    _wait("API /connected", lambda: _connected(), timeout, [("api", api)])


def _connected() -> bool:
    code, body = _get("/connected")
    try:
        return code == 200 and json.loads(body).get("status") == "connected"
    except (ValueError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------- stop


def _proc_table() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, command line, environment) for every process we can read."""
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                environ = b""
            table[int(d.name)] = (ppid, cmd, environ)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _ours() -> set[int]:
    """Recorded PIDs, processes run from the server venv or carrying our marker, and descendants."""
    table = _proc_table()
    marker = f"{MARKER}={STATE}\0".encode()

    def looks_ours(pid: int) -> bool:
        _, cmd, environ = table[pid]
        return str(VENV) in cmd or marker in environ

    # A recorded PID counts only while it still looks like ours (PIDs get reused).
    roots = {pid for pid in _load_pids().values() if pid in table and (looks_ours(pid) or "redis-server" in table[pid][1])}
    roots |= {pid for pid in table if looks_ours(pid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    # Never this process or its ancestors (the shell or test run that called us).
    pid = os.getpid()
    while pid > 1:
        found.discard(pid)
        pid = table.get(pid, (0,))[0]
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(args) -> int:
    pids = _ours()
    redis_pid = STATE / "redis.pid"
    if redis_pid.exists():
        try:
            pids.add(int(redis_pid.read_text().strip()))
        except ValueError:
            pass
    pids = {p for p in pids if _alive(p)}
    if not pids:
        log("nothing running")
    else:
        log(f"stopping {len(pids)} processes (TERM)")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + getattr(args, "grace", 5)
        while time.time() < end and any(_alive(p) for p in pids):
            time.sleep(0.3)
        # Ray spawns more workers while it goes down: look again.
        left = {p for p in pids | _ours() if _alive(p)}
        if left:
            log(f"{len(left)} still alive: KILL")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
    left = {p for p in _ours() if _alive(p)}
    for f in (PIDS, redis_pid):
        f.unlink(missing_ok=True)
    shutil.rmtree(RAY_TMP, ignore_errors=True)
    if left:
        log(f"could not stop: {sorted(left)}")
        return 1
    busy = [p for p in PORTS if _port_busy(p)]
    if busy:
        log(f"stopped ours, but something still listens on {busy}")
        return 1
    log("stopped")
    return 0


# ----------------------------------------------------------------------------------------- status


def status(args) -> int:
    if not installed():
        log("not installed")
        return 3
    info = json.loads(INSTALLED.read_text())
    log(f"installed: {info.get('versions (nnsight ray torch)')}, venv {info['venv_bytes'] / 2**30:.2f} GiB")
    for name, pid in _load_pids().items():
        log(f"{name}: pid {pid} {'alive' if _alive(pid) else 'gone'}")
    ping, _ = _get("/ping")
    code, body = _get("/connected")
    log(f"{API_URL}/ping -> {ping or 'no answer'}; /connected -> {code or 'no answer'} {body[:200]}")
    return 0 if ping == 200 and _connected() else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="create the server venv in .ndif/ and install redis-server")
    s = sub.add_parser("start", help="start the server; returns when it accepts traces")
    s.add_argument("--timeout", type=float, default=180, help="seconds to wait for /connected")
    t = sub.add_parser("stop", help="stop everything start started")
    t.add_argument("--grace", type=float, default=5, help="seconds between TERM and KILL")
    sub.add_parser("status", help="exit 0 when the server answers and is connected")
    args = ap.parse_args(argv)
    return {"install": install, "start": start, "stop": stop, "status": status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
