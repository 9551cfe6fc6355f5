"""nnsight-persona report: the page's content, read back from its HTML (the browser test,
test_report_browser.py, checks it renders). Expected numbers come from the result files through
plain netCDF reads (tests/report_folder.py), never through the analysis code."""

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from report_folder import PARTIAL, additive_medians, decompose_medians, make_folder


class Page(HTMLParser):
    """Sections (by id) with their tables (data-table kind -> rows of {column: (text, data-value)}),
    images and the incomplete-runs banner."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.banner, self._section, self._table, self._cell = {}, None, None, None, None
        self._in_banner = self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = self.sections.setdefault(a["id"], {"attrs": a, "tables": {}, "images": []})
        elif tag == "div" and a.get("id") == "incomplete-runs":
            self.banner, self._in_banner = "", True
        elif tag == "table" and self._section is not None:
            self._table = self._section["tables"].setdefault(a["data-table"], [])
        elif tag == "tbody" and self._table is not None:
            self._in_body = True
        elif tag == "tr" and self._table is not None and self._in_body:
            self._table.append({})
        elif tag == "td" and self._table is not None and self._in_body:
            self._cell = [a.get("data-column"), a.get("data-value"), ""]
        elif tag == "img" and self._section is not None:
            self._section["images"].append(a)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data
        if self._in_banner:
            self.banner += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            column, value, text = self._cell
            if column is not None:
                self._table[-1][column] = (text.strip(), value)
            self._cell = None
        elif tag == "table":
            self._table, self._in_body = None, False
        elif tag == "div":
            self._in_banner = False
        elif tag == "section":
            self._section = None


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from nnsight_persona.report.page import write_report

    folder = make_folder(tmp_path_factory.mktemp("report") / "toy")
    write_report(folder)
    return folder


@pytest.fixture(scope="module")
def page(folder):
    return Page((folder / "index.html").read_text(encoding="utf-8"))


def test_the_command_writes_one_self_contained_page(folder, tmp_path):
    from nnsight_persona.cli import main

    first = (folder / "index.html").read_bytes()
    result = CliRunner().invoke(main, ["report", str(folder), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (folder / "index.html").read_bytes() == first  # the same files give the same page
    text = first.decode()
    assert "src=\"http" not in text and "href=\"http" not in text and "<script" not in text
    missing = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert missing.exit_code != 0 and "holds no result files" in missing.output


def test_every_figure_is_embedded_from_its_file(folder, page):
    import xarray as xr

    from nnsight_persona.plots import FIGURES, figure_names

    for name in ("substitute-toy", "decompose-toy", "markers-toy"):
        section = page.sections[name]
        images = {img["data-figure"]: img["src"] for img in section["images"]}
        # Every figure of the experiment the file can draw (a markers file made before evidence: no evidence figure).
        assert set(figure_names(xr.load_dataset(folder / f"{name}.nc"))) <= set(images)
        for img in section["images"]:
            assert img["src"].startswith("data:image/png;base64,")
            assert base64.b64decode(img["src"].split(",", 1)[1]) == (folder / img["data-file"]).read_bytes()
    # the partial file has no PNGs next to it: its figures are drawn for the page
    drawn = page.sections["substitute-partial"]["images"]
    assert len(drawn) == len(FIGURES["substitute"])
    assert all(base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for img in drawn)


def _embedded_pngs(page) -> dict:
    return {img["data-file"]: img["src"] for section in page.sections.values() for img in section["images"]}


def test_every_png_of_the_folder_is_embedded(folder, page):
    embedded = _embedded_pngs(page)
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs and set(pngs) <= set(embedded)
    for name in pngs:
        assert base64.b64decode(embedded[name].split(",", 1)[1]) == (folder / name).read_bytes()


def test_the_page_opens_with_the_findings_and_no_section_is_empty(folder, page):
    from nnsight_persona.analysis.findings import folder_findings

    text = (folder / "index.html").read_text(encoding="utf-8")
    body = text[text.index("<body>"):]
    assert body.index('id="findings"') < body.index("<nav>") < body.index('class="experiment"')
    digest = page.sections["findings"]["tables"]["findings"]
    claims = folder_findings(folder)
    assert len(page.sections["findings"]["tables"]["claims"]) == len(claims)
    assert sum(int(r["holds"][0]) for r in digest) == sum(c["holds"] for c in claims)
    for name, section in page.sections.items():
        if name != "findings":
            assert section["images"] or set(section["tables"]) - {"provenance"}, f"section {name} is empty"
    # figures first, tables folded
    start = text.index('<section id="substitute-toy"')
    part = text[start:text.index("</section>", start)]
    assert part.index("<img") < part.index("<details") < part.index('data-table="additivity"')


@pytest.mark.parametrize("name", ["toy", "smollm2"])
def test_the_report_of_each_artifacts_folder_embeds_every_png(tmp_path, name):
    import shutil

    from nnsight_persona.report.page import write_report

    source = Path(__file__).resolve().parent.parent / "artifacts" / name
    folder = shutil.copytree(source, tmp_path / name)
    page = Page(write_report(folder).read_text(encoding="utf-8"))
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) > 0 and sorted(set(_embedded_pngs(page)) & set(pngs)) == pngs
    experiments = {s["attrs"].get("data-experiment") for s in page.sections.values()}
    assert any(e.startswith("vectors") for e in experiments) and any(e.startswith("subnetwork") for e in experiments)


@pytest.mark.parametrize("name", ["substitute-toy", "substitute-partial"])
def test_the_additivity_table_holds_the_files_medians(folder, page, name):
    want = additive_medians(folder / f"{name}.nc")
    rows = page.sections[name]["tables"]["additivity"]
    assert len(rows) == len(want)
    for row in rows:
        key = (row["position"][0], int(row["layer"][0]))
        assert float(row["additive"][1]) == pytest.approx(want[key], rel=1e-9)
        assert float(row["additive"][0]) == pytest.approx(want[key], rel=2e-3)  # shown to 4 significant digits


def test_the_decompose_table_holds_the_files_medians(folder, page):
    want = decompose_medians(folder / "decompose-toy.nc")
    rows = page.sections["decompose-toy"]["tables"]["medians"]
    assert len(rows) == len(want)
    for row in rows:
        assert float(row["cos_xy_sum"][1]) == pytest.approx(want[(row["position"][0], int(row["layer"][0]))], rel=1e-9)


def test_an_incomplete_run_is_flagged(page):
    assert page.banner is not None and f"{PARTIAL}" in page.banner
    assert page.sections["substitute-partial"]["attrs"]["data-completed"] == "0"
    assert page.sections["substitute-toy"]["attrs"]["data-completed"] == "1"
    completed = page.sections["substitute-partial"]["tables"]["provenance"][0]["completed"][0]
    assert completed.startswith("NO") and "Ctrl-C" in completed


def test_provenance_and_what_it_shows_come_from_the_file(folder, page):
    import netCDF4

    with netCDF4.Dataset(folder / "substitute-toy.nc") as f:
        commit, created, model = f.getncattr("git_commit"), f.getncattr("created"), f.getncattr("model_id")
    row = page.sections["substitute-toy"]["tables"]["provenance"][0]
    assert row["git commit"][0] == commit and row["created"][0] == created and row["model"][0] == model
    text = (folder / "index.html").read_text()
    start = text.index('<section id="substitute-toy"')
    section = text[start:text.index("</section>", start)]
    assert f"{model} (8 layers, float32) on grid toy, 12 cells." in section


def test_the_committed_pages_are_current(tmp_path):
    """artifacts/*/index.html is what the current code writes for its folder."""
    from nnsight_persona.report.page import write_report

    pages = sorted((Path(__file__).resolve().parent.parent / "artifacts").glob("*/index.html"))
    if not pages:
        pytest.skip("no committed report pages")
    for page in pages:
        fresh = write_report(page.parent, out=tmp_path / f"{page.parent.name}.html")
        assert fresh.read_bytes() == page.read_bytes(), f"{page} is stale: run nnsight-persona report {page.parent}"


def test_a_figure_older_than_its_result_is_used_where_the_manifest_lists_both(tmp_path):
    """A checkout that updates a result file but not its unchanged figure leaves the figure older;
    the folder's manifest, which lists both with their hashes, says they belong together."""
    import base64
    import os
    import shutil

    from nnsight_persona.storage.manifest import NAME
    from nnsight_persona.report.page import write_report

    src = Path(__file__).resolve().parent.parent / "artifacts" / "toy"
    folder = tmp_path / "toy"
    folder.mkdir()
    for name in ("markers-toy.nc", "markers-toy-markers.png", NAME):
        shutil.copy(src / name, folder / name)
    png = folder / "markers-toy-markers.png"
    old = (folder / "markers-toy.nc").stat().st_mtime - 3600
    os.utime(png, (old, old))
    embedded = base64.b64encode(png.read_bytes()).decode("ascii")
    assert embedded in write_report(folder, out=tmp_path / "a.html").read_text()
    (folder / NAME).unlink()  # no manifest: an older figure is not trusted, it is drawn again
    assert embedded not in write_report(folder, out=tmp_path / "b.html").read_text()
