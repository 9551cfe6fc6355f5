"""The remote path of substitute and inject: sessions in which the server computes the capture
residuals, builds every replacement vector from them and patches them in (docs/remote.md).

Each session holds `batches_per_request` batches of patched rows (the batches a whole-sequence
sweep makes, an unedited reference row per cell included). Before them it runs the capture passes
of the cells those batches patch: each cell's four condition prompts (BB, XB, BY, XY) followed by
the first clean continuation tokens (so g1 and g2 exist), read at exactly the (layer, position)
sites the batches write, plus any other row an experiment asks for. The batches then carry
`LayerRecipe`s (core/recipes.py): which read sites each vector is built from and how. Only the
per-row KL sums (and norms an experiment asks for) come back. The clean continuation itself, token
ids, is a request of its own (or comes from a capture file).
"""

from __future__ import annotations

from ...core import tracing
from ...core.progress import tqdm
from ...core.prompts import GENERATED_POSITIONS
from ...core.recipes import SiteTable
from ...core.replacements import ORDER


def forced_tokens(positions) -> int:
    """How many clean continuation tokens the capture rows need for these positions (g1: 1, g2: 2)."""
    return max([GENERATED_POSITIONS[p] + 1 for p in positions if p in GENERATED_POSITIONS], default=0)


class CaptureRows:
    """The capture rows of the cells of a sweep: each condition's prompt (`prompts[(label,
    condition)]`) with the cell's first `n_forced` continuation tokens, and the sites of a
    session registered on its SiteTable under (cell index, condition, position)."""

    def __init__(self, prompts: dict, labels: list[str], continuation, n_forced: int):
        self.prompts, self.labels, self.continuation, self.n_forced = prompts, labels, continuation, n_forced

    def seq(self, ci: int, condition: str) -> list[int]:
        return list(self.prompts[(self.labels[ci], condition)].ids) + self.continuation[ci, :self.n_forced].tolist()

    def need(self, table: SiteTable, layer: int, ci: int, position: str) -> None:
        """The four conditions' residuals of cell `ci` at (layer, position)."""
        for condition in ORDER:
            index = self.prompts[(self.labels[ci], condition)].position(position)
            table.need(layer, (ci, condition, position), (ci, condition), self.seq(ci, condition), index)

    def sources(self, number: dict, layer: int, ci: int, position: str) -> list[int]:
        """Where those four residuals are in what the server read at `layer`: BB, XB, BY, XY."""
        return [number[(layer, (ci, condition, position))] for condition in ORDER]


def sessions(loaded, chunks: list, per_request: int, batch_size: int, plan, desc: str, progress: bool):
    """Run `chunks` (lists of rows) in sessions of `per_request`, yielding for each session
    (its chunks, the KL values of each chunk's patched rows, the norms asked for).

    `plan(group, table)` registers on `table` (a SiteTable) the sites the group's chunks need and
    returns `build(number)`, which, given the sites' numbers, makes ([((batch, recipes,
    window_cols, reference_rows), n_reference_rows) per chunk], norm recipes)."""
    per_request = max(1, per_request)
    with tqdm(total=len(chunks), desc=desc, disable=not progress) as bar:
        for start in range(0, len(chunks), per_request):
            group = chunks[start:start + per_request]
            table = SiteTable()
            build = plan(group, table)
            reads, number = table.finish(loaded.pad_id, batch_size)
            jobs, norms = build(number)
            results, sizes = tracing.window_kl_native_session(loaded, reads, [job for job, _ in jobs], norms)
            yield group, [got[n_reference:].tolist() for (_, n_reference), got in zip(jobs, results)], sizes
            bar.update(len(group))
