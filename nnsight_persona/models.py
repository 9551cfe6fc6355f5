"""Load a chat model for experiments: the embedded toy model, a hub id, or a local directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .sites import Adapter, adapter_for, module_at

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


def resolve_model_path(spec: str) -> str:
    """'toy' -> the embedded toy model's folder; a directory stays a directory; else a hub id."""
    if spec == "toy":
        from .toy import TOY_MODEL_DIR

        return str(TOY_MODEL_DIR)
    return str(Path(spec).resolve()) if Path(spec).is_dir() else spec


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
    """Load `spec` ("toy", a hub id or a local directory) as an nnsight TransformersModel.

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

    path = resolve_model_path(spec)
    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; allowed: {list(DTYPES)}")
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
        # Passing the tokenizer explicitly side-steps nnsight's tokenizer guessing.
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load model {spec!r}: {exc}. Give 'toy', a local directory with config.json and "
            "tokenizer files, or a hub id reachable from this machine."
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
        path,
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
        if isinstance(remote, str) and remote.startswith(("http://", "https://")) and Path(path).is_dir():
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
        revision=revision or _local_revision(path),
        dtype=dtype,
        family=family,
        n_layers=int(text_config.num_hidden_layers),
        hidden_size=int(text_config.hidden_size),
        remote=remote,
    )


def _local_revision(path: str) -> str:
    """A content hash of a local model's weights (hub models report their revision instead)."""
    import hashlib

    p = Path(path)
    if not p.is_dir():
        return "main"
    h = hashlib.sha256()
    for f in sorted(p.glob("*.safetensors")):
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()[:16] if h else "unknown"
