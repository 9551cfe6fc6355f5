"""The docs' generated findings blocks: `<!-- generated: findings FOLDER [PATTERN] -->`.

The claims are computed over the whole folder (Holm within each rule and file, findings.adjust) and
the block shows those of the result files matching PATTERN (fnmatch patterns joined by commas, default every file): per file and claim, how many of its sites
(layers, bands, ...) hold, then, for the claims at one site, the effect, its interval and the p."""

from __future__ import annotations

import fnmatch
from functools import lru_cache

from .findings import folder_findings, where_text
from .markdown import markdown, number


@lru_cache(maxsize=8)
def _claims(folder: str) -> tuple:
    return tuple(folder_findings(folder))


def findings_block(folder: str, pattern: str = "*") -> str:
    patterns = pattern.split(",")
    claims = [c for c in _claims(folder) if any(fnmatch.fnmatchcase(c["file"], p) for p in patterns)]
    if not claims:
        return f"No rule of the findings registry applies to the files {pattern} of {folder}."
    groups: dict[tuple, list[dict]] = {}
    for c in claims:
        groups.setdefault((c["file"], c["claim"]), []).append(c)
    rows = []
    for (file, claim), members in groups.items():
        if len(members) == 1:
            c = members[0]
            detail = (f"effect {number(c['effect'])} [{number(c['ci_low'])}, {number(c['ci_high'])}], "
                      f"p_holm {number(c['p_holm'])} (family of {c['family_size']})")
        else:
            held = [where_text(c["coords"]) for c in members if c["holds"]]
            failed = [where_text(c["coords"]) for c in members if not c["holds"]]
            if not held:
                detail = "holds at no site"
            elif not failed:
                detail = "holds at every site"
            elif len(held) <= len(failed):
                detail = "holds at " + "; ".join(held)
            else:
                detail = "holds except at " + "; ".join(failed)
        rows.append([file, claim, f"{sum(c['holds'] for c in members)}/{len(members)}", members[0]["n"], detail])
    families = len({(c["file"], c["rule"]) for c in _claims(folder)})
    note = (f"\n\nClaims of `nnsight-persona findings {folder}` (analysis/findings.py): effect = mean paired "
            f"difference over the unit, 95% bootstrap interval, sign-flip p Holm-adjusted within each rule and "
            f"file (the folder's {len(_claims(folder))} claims form {families} families; a claim's family: every "
            f"control and site of its rule in its file); a claim holds where the adjusted p < 0.05 in its direction.")
    return markdown(["file", "claim", "sites where it holds", "n", "detail"], rows) + note


GENERATORS = {"findings": findings_block}
