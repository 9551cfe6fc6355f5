"""``toy`` command group: train and evaluate the embedded toy persona model."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import TOY_MODEL_DIR

DEFAULT_TRAIN_OUT = "toy-model"


@click.group(name="toy")
def toy() -> None:
    """The small embedded chat model with personas."""


@toy.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_TRAIN_OUT,
              show_default=True, help="Folder to write the trained model to.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: TrainConfig.steps).")
@click.option("--batch-size", type=int, default=None, help="Examples per step (default: TrainConfig.batch_size).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: TrainConfig.lr).")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
@click.option("--tiny", is_flag=True, help="Use a tiny 2-layer architecture (smoke tests only).")
@click.option("--checkpoints", default="", help="Comma list of steps after which to also save a checkpoint, "
              "into OUT/checkpoints/step-NNNNN (e.g. 25,50,100,200): for `vectors trace`.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train(out_dir: Path, seed: int, steps: int | None, batch_size: int | None, lr: float | None, threads: int,
          tiny: bool, checkpoints: str, no_progress: bool) -> None:
    """Build the corpus and tokenizer, train the toy model and save it to OUT."""
    from .model import TINY_ARCH
    from .train import TrainConfig
    from .train import train as run_train

    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr).items() if v is not None}
    try:
        saved = tuple(sorted({int(s) for s in checkpoints.split(",") if s.strip()}))
    except ValueError:
        raise click.BadParameter(f"{checkpoints!r} is not a comma list of steps", param_hint="--checkpoints") from None
    total = overrides.get("steps", TrainConfig.steps)
    if any(not 1 <= s <= total for s in saved):
        raise click.BadParameter(f"checkpoint steps must lie in 1..{total}, got {list(saved)}", param_hint="--checkpoints")
    overrides["checkpoints"] = saved
    cfg = TrainConfig(seed=seed, threads=threads, arch=dict(TINY_ARCH) if tiny else {}, **overrides)
    summary = run_train(out_dir, cfg, progress=not no_progress)
    click.echo(f"saved to {out_dir}")
    click.echo(f"parameters: {summary['parameters']:,}  final loss: {summary['final_loss']:.4f}")
    click.echo(f"time taken: {summary['train_seconds']:.1f} s ({summary['train_seconds'] / 60:.1f} min)")


@toy.command()
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=TOY_MODEL_DIR,
              show_default=True, help="Model folder to evaluate.")
@click.option("--n", type=int, default=240, show_default=True, help="Number of held-out prompts.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the held-out prompt sample.")
@click.option("--batch-size", type=int, default=48, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics (and generated samples) to this JSON file.")
@click.option("--check", is_flag=True, help="Exit with status 1 when a threshold is missed.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch CPU threads.")
@click.option("--novel", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also measure copying of names, cities and items absent from the corpus, on N prompts per case.")
def evaluate(model_dir: Path, n: int, seed: int, batch_size: int, json_path: Path | None, check: bool,
             threads: int, novel: int) -> None:
    """Greedy-generate on held-out prompts and print marker / leak / copy metrics."""
    from .evaluate import THRESHOLDS
    from .evaluate import evaluate as run_eval

    metrics = run_eval(model_dir, n=n, seed=seed, batch_size=batch_size, return_samples=json_path is not None,
                       threads=threads, novel=novel)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if key == "samples":
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        rule = f"  (required {THRESHOLDS[key][0]} {THRESHOLDS[key][1]})" if key in THRESHOLDS else ""
        click.echo(f"{key:<{width}}  {shown}{rule}")
    if json_path is not None:
        json_path.write_text(json.dumps(metrics, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    if check and not metrics["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    toy()


COMMANDS = (toy,)
