"""MANIFEST.json says which command made a folder's files: a rerun that made nothing keeps it."""

import json

from nnsight_persona.storage.manifest import NAME, read_manifest, write_manifest


def test_a_manifest_is_kept_while_it_lists_the_files_present_and_rewritten_when_they_change(tmp_path):
    (tmp_path / "a.nc").write_bytes(b"first")
    write_manifest(tmp_path, command="nnsight-persona made-it")
    before = (tmp_path / NAME).read_bytes()
    write_manifest(tmp_path, command="nnsight-persona found-it-done")
    assert (tmp_path / NAME).read_bytes() == before  # same files: the maker's record stands
    (tmp_path / "a.nc").write_bytes(b"second")
    (tmp_path / "b.png").write_bytes(b"figure")
    write_manifest(tmp_path, command="nnsight-persona remade-it")
    manifest = read_manifest(tmp_path)
    assert manifest["command"] == "nnsight-persona remade-it"
    assert sorted(manifest["files"]) == ["a.nc", "b.png"]


def test_an_unreadable_manifest_is_written_anew(tmp_path):
    (tmp_path / "a.nc").write_bytes(b"x")
    (tmp_path / NAME).write_text("{not json", encoding="utf-8")
    write_manifest(tmp_path, command="nnsight-persona again")
    assert json.loads((tmp_path / NAME).read_text())["command"] == "nnsight-persona again"
