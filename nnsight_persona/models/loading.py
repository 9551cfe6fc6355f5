"""Load a chat model for experiments: the embedded toy model, a hub id, or a local directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ModelError
from ..core.sites import Adapter, adapter_for, module_at

# Numerics each family was studied in (the paper: Gemma-2 float32, Qwen-2.5 bfloat16, as float16
# overflows to NaN there). Anything else defaults to float32.
DEFAULT_DTYPE = {"gemma2": "float32", "qwen2": "bfloat16"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    """A wrapped nnsight model with what experiments need to know about it."""

    lm: object  # nnsight TransformersModel
    tokenizer: object
    adapter: Adapter
    model_id: str
    revision: str
    dtype: str
    family: str
    n_layers: int
    hidden_size: int
    # Where traces run: False (here), "local" (nnsight's local simulation of the remote path:
    # each block is serialized and run as a server would), or an NDIF host URL.
    remote: bool | str = False

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def layers(self):
        return module_at(self.lm, self.adapter.layers)

    @property
    def eos_ids(self) -> list[int]:
        """Every token that ends a turn: the tokenizer's eos and the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.lm._module, "generation_config", None), "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
        return sorted(i for i in ids if i is not None)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


# A hub id: "name" or "namespace/name" of letters, digits, "-", "_", "."; anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
HUB_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec's files are: `path` is a local folder or a hub id; `revision` the weights'
    identity when it is known without hashing them (an alias's fingerprint, a hub snapshot's commit);
    `hub_id` the id a remote server knows the model by, for hub models."""

    path: str
    revision: str | None = None
    hub_id: str | None = None


def resolve_model(spec: str, revision: str | None = None) -> ModelSource:
    """An alias ('toy', 'smollm2': built on first use), an existing directory, or a hub id.

    A spec that looks like a path but is no directory is refused. A hub id that is not in the local
    hub cache fails at once when the hub is offline or does not answer one quick request; one that
    is in the cache loads from there when the hub cannot be reached."""
    from .aliases import ALIASES, suggestion

    if spec in ALIASES:
        folder, known = ALIASES[spec].locate()
        return ModelSource(str(folder), known)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(str(path.resolve()))
    if path.exists():
        raise ModelError(f"model {spec!r} is a file; give a model directory (config.json, weights, tokenizer files)")
    if not _HUB_ID.match(spec):
        raise ModelError(
            f"model directory {spec!r} does not exist; give an existing local model directory, a hub id "
            f"like 'google/gemma-2-2b-it', or an alias. {suggestion(Path(spec).name)}"
        )
    return _hub_source(spec, revision, suggestion(spec))


def resolve_model_path(spec: str) -> str:
    """'toy' -> the embedded toy model's folder; a directory stays a directory; else a hub id."""
    return resolve_model(spec).path


def _hub_source(repo_id: str, revision: str | None, hint: str) -> ModelSource:
    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # not in the local hub cache (LocalEntryNotFoundError), or an unreadable cache
        snapshot = None
    if constants.is_offline_mode():
        if snapshot is None:
            raise ModelError(
                f"model {repo_id!r} is not a local directory and not in the local hub cache, and HF_HUB_OFFLINE "
                f"is set; {hint}"
            )
        return ModelSource(snapshot, Path(snapshot).name, repo_id)
    unreachable = _hub_unreachable(repo_id, revision)
    if unreachable is None:
        return ModelSource(repo_id, None, repo_id)
    if snapshot is not None:  # the hub is down, but a copy is here: no retries, no waiting
        return ModelSource(snapshot, Path(snapshot).name, repo_id)
    raise ModelError(
        f"model {repo_id!r} is not a local directory and not in the local hub cache, and the model hub "
        f"({constants.ENDPOINT}) cannot be reached ({unreachable}); {hint}"
    )


def _hub_unreachable(repo_id: str, revision: str | None) -> str | None:
    """None if the hub answers one HEAD request for the repo's config (any status), else why not."""
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, "config.json", revision=revision)
    try:
        get_session().head(url, headers=build_hf_headers(), timeout=HUB_PROBE_TIMEOUT_S, follow_redirects=False)
    except Exception as exc:  # the HTTP client's connect, timeout and proxy errors
        return re.sub(r"\s+", " ", str(exc) or type(exc).__name__)[:160]
    return None


def resolve_device(device: str | None) -> str:
    """'auto' or None -> 'cuda' where a GPU is visible, else 'cpu'; anything else must name a
    torch device this machine has ('cpu', 'cuda', 'cuda:1', 'mps')."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise ModelError(f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA device(s) visible)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} is not available here")
    return device


def load_model(
    spec: str = "toy",
    dtype: str | None = None,
    attn: str = "eager",
    revision: str | None = None,
    remote: bool | str = False,
    device: str | None = "auto",
) -> LoadedModel:
    """Load `spec` (an alias such as "toy" or "smollm2", a hub id or a local directory) as an nnsight
    TransformersModel; the loaded model's `model_id` is `spec` itself.

    Eager attention by default, so attention weights exist and knockouts see the real kernel.
    `remote`: False runs here; "local" runs nnsight's local simulation of the remote path; True or
    an NDIF host URL sends traces to NDIF, and then the weights are not loaded here (the model is
    built on the meta device, only its config and tokenizer are read).
    `device`: where the weights go when they are loaded here ('auto': a GPU if there is one).
    Experiments build their batches and edits on the CPU; nnsight moves a trace's inputs to the
    model's device, and the trace helpers move edit values to each site's device.
    """
    import torch
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoConfig, AutoTokenizer

    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; allowed: {list(DTYPES)}")
    source = resolve_model(spec, revision)
    path = source.path
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
        # Passing the tokenizer explicitly side-steps nnsight's tokenizer guessing.
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        from .aliases import close_aliases, suggestion

        raise ModelError(
            f"cannot load model {spec!r}: {exc}. Give an alias ('toy', 'smollm2'), a local directory with "
            "config.json and tokenizer files, or a hub id reachable from this machine."
            + (f" {suggestion(spec)}" if close_aliases(spec) else "")
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"model {spec!r} has no chat template; persona prompts are rendered through the model's "
            "own chat template, so use an instruction-tuned (chat) checkpoint."
        )
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ModelError(f"model {spec!r}'s tokenizer has neither a pad nor an eos token to pad batches with")
    tokenizer.padding_side = "left"
    family = getattr(config, "model_type", "?")
    dtype = dtype or DEFAULT_DTYPE.get(family, "float32")
    local = remote in (False, "local")
    target = resolve_device(device) if local else "cpu"
    placement = {} if target == "cpu" else {"device_map": target}
    lm = TransformersModel(
        path if local or source.hub_id is None else source.hub_id,
        task="text-generation",
        tokenizer=tokenizer,
        attn_implementation=attn,
        dtype=getattr(torch, dtype),
        revision=revision,
        dispatch=local,
        **placement,
    )
    if local:
        lm._module.requires_grad_(False)
        lm._module.eval()
    else:
        import nnsight

        import nnsight_persona

        # Our trace helpers (edits, knockouts) travel by value: the server has no nnsight_persona.
        nnsight.register(nnsight_persona)
        if isinstance(remote, str) and remote.startswith(("http://", "https://")) and source.hub_id is None:
            # Your own NDIF sharing this disk: the folder's absolute path is the model key. nnsight
            # would otherwise canonicalize the id through the hub, which knows no local folder.
            from nnsight.modeling import huggingface

            huggingface._ID_CACHE.setdefault(path, path)
    adapter = adapter_for(lm._module)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return LoadedModel(
        lm=lm,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=spec,
        revision=revision or source.revision or _local_revision(path),
        dtype=dtype,
        family=family,
        n_layers=int(text_config.num_hidden_layers),
        hidden_size=int(text_config.hidden_size),
        remote=remote,
    )


def _local_revision(path: str) -> str:
    """A content hash of a local model's weights (hub models report their revision instead)."""
    from ..storage.cache import weights_fingerprint

    return weights_fingerprint(Path(path)) if Path(path).is_dir() else "main"
