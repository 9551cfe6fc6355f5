"""Progress: tqdm's bar on a terminal; elsewhere a few whole lines with an ETA; --quiet silences it."""

import io

from click.testing import CliRunner

from nnsight_persona.core.progress import PlainLines, tqdm


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_a_few_plain_lines_with_an_eta():
    stream = io.StringIO()
    for _ in tqdm(range(200), desc="work", file=stream):
        pass
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text
    assert [line.split()[1] for line in lines] == ["0%", "25%", "50%", "75%", "100%"]
    assert all(line.startswith("work:") and "ETA" in line for line in lines)
    assert lines[-1].split()[2] == "200/200"


def test_on_a_terminal_tqdms_own_bar_and_none_when_disabled():
    terminal = Terminal()
    bar = tqdm(range(3), desc="work", file=terminal)
    assert not isinstance(bar, PlainLines)
    list(bar)
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    list(tqdm(range(3), desc="work", file=quiet, disable=True))
    assert quiet.getvalue() == ""


def test_commands_print_progress_lines_unless_quiet(tiny_dirs, tiny_grid_file, tmp_path):
    from nnsight_persona.cli import main

    base = ["capture", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--layers", "1",
            "--positions", "p_last", "--n-continuation", "3"]
    shown = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a.nc")])
    assert shown.exit_code == 0, shown.output
    progress = [line for line in shown.output.splitlines() if "ETA" in line]
    assert any(line.startswith("capture: 100%") for line in progress) and "\r" not in shown.output
    assert len(progress) <= 12  # a few lines per bar, not one per batch
    quiet = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b.nc"), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "ETA" not in quiet.output and "wrote" in quiet.output


def test_the_other_papers_commands_take_quiet_too(tmp_path):
    from nnsight_persona.cli import main

    base = ["subnetwork", "find", "--model", "toy", "--set", "toy", "--sparsity", "0.3"]
    shown = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a.nc")])
    assert shown.exit_code == 0, shown.output
    assert any("ETA" in line for line in shown.output.splitlines())
    quiet = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b.nc"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "ETA" not in quiet.output
    assert "--quiet" in CliRunner().invoke(main, ["vectors", "extract", "--help"]).output
