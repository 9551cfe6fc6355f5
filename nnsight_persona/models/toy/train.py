"""Seeded CPU trainer for the toy persona chat model.

Builds the corpus and tokenizer, trains a tiny Llama with the loss on assistant
tokens only, and writes a ``from_pretrained``-loadable folder.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .corpus import generate_corpus, messages


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 48
    lr: float = 3e-3
    min_lr_frac: float = 0.05
    warmup: int = 60
    weight_decay: float = 0.01
    vocab_size: int = 1200
    threads: int = 2
    arch: dict = field(default_factory=dict)  # overrides of model.DEFAULT_ARCH
    checkpoints: tuple = ()  # steps after which to save an intermediate checkpoint (out/checkpoints/step-NNNNN)


def render_prompt_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False).input_ids


def encode_examples(tokenizer, examples) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example; the answer ends with <|end|>."""
    prompts = tokenizer.apply_chat_template(
        [messages(e) for e in examples], add_generation_prompt=True, tokenize=False
    )
    p_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    a_ids = tokenizer([e.answer for e in examples], add_special_tokens=False).input_ids
    eos = tokenizer.eos_token_id
    return [(p + a + [eos], len(p)) for p, a in zip(p_ids, a_ids)]


def collate(batch, pad_id: int):
    """Right-padded input ids, attention mask and labels masked outside the answer."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (seq, n_prompt) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, n_prompt : len(seq)] = ids[i, n_prompt : len(seq)]
    return ids, mask, labels


def length_bucketed_batches(data, batch_size: int, rng: random.Random, chunk: int = 16) -> list[list]:
    """Batches of similar length (less padding, faster on CPU), in shuffled order.

    Examples are sorted by length within chunks of ``chunk`` batches, so a batch
    still mixes example kinds of similar length and the order stays seeded."""
    batches = []
    span = batch_size * chunk
    for i in range(0, len(data), span):
        part = sorted(data[i : i + span], key=lambda d: len(d[0]))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train(out_dir: str | Path, cfg: TrainConfig | None = None, progress: bool = True) -> dict:
    """Train and save the toy model to ``out_dir``; returns a summary dict. The thread count and
    the seeded global RNG hold for the run only (settings.torch_settings)."""
    from .settings import torch_settings

    cfg = cfg or TrainConfig()
    with torch_settings(cfg.threads, seed=cfg.seed):
        return _train(out_dir, cfg, progress)


def _train(out_dir: str | Path, cfg: TrainConfig, progress: bool) -> dict:
    import torch
    from ...core.progress import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    from .model import count_parameters, toy_config
    from .tokenizer import build_tokenizer

    t0 = time.perf_counter()

    examples = generate_corpus(cfg.steps * cfg.batch_size, seed=cfg.seed)
    tokenizer = build_tokenizer((f"{e.system or ''} {e.user} {e.answer}" for e in examples), vocab_size=cfg.vocab_size)
    batches = length_bucketed_batches(encode_examples(tokenizer, examples), cfg.batch_size, random.Random(cfg.seed))

    config = toy_config(tokenizer, **cfg.arch)
    config._attn_implementation = "eager"  # faster than sdpa for these tiny shapes on CPU
    model = LlamaForCausalLM(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=96,
    )
    out = Path(out_dir)
    saved = set(cfg.checkpoints)
    losses = []
    bar = tqdm(range(cfg.steps), desc="toy train", disable=not progress, mininterval=2.0)
    for step in bar:
        ids, mask, labels = collate(batches[step], tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        if step + 1 in saved:
            _save_checkpoint(model, tokenizer, out / "checkpoints" / f"step-{step + 1:05d}", step + 1, losses)

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    seconds = time.perf_counter() - t0
    summary = {
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "examples": len(examples),
        "parameters": count_parameters(model),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_seconds": round(seconds, 1),
        "config": asdict(cfg),
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _save_checkpoint(model, tokenizer, folder: Path, step: int, losses: list[float]) -> None:
    """An intermediate checkpoint: a loadable model folder plus checkpoint.json (its step and loss).
    Saving reads the weights only, so the run goes on exactly as without checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    recent = losses[-50:]
    (folder / "checkpoint.json").write_text(json.dumps({"step": step, "loss": sum(recent) / len(recent)}) + "\n")
