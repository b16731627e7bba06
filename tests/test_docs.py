"""The generated references (docs/cli.md, docs/configuration.md, docs/schema-reference.md) match
what the code renders now, and every relative link in the docs and the README resolves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from facespace_bridge import docgen

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "examples").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_generated_references_are_not_stale() -> None:
    rendered = docgen.render_all(REPO / "schemas")
    for relative, content in rendered.items():
        on_disk = (REPO / relative).read_text(encoding="utf-8")
        assert on_disk == content, f"{relative} is stale: run `make docs`"


def test_stale_detects_a_changed_schema(tmp_path: Path) -> None:
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    assert docgen.stale(tmp_path) == []
    schema = tmp_path / "schemas" / "sighting" / "v1.json"
    schema.write_text(schema.read_text().replace("The camera that saw the person", "The camera"))
    assert docgen.stale(tmp_path) == ["docs/schema-reference.md"]
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.stale(tmp_path) == []


def test_configuration_reference_names_every_option_of_run() -> None:
    from facespace_bridge.commands.run import command

    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = text.split("## `facespace-bridge run`", 1)[1].split("\n## ", 1)[0]
    for param in command.params:
        if param.name != "help":
            assert f"`{param.opts[0]}`" in section, param.name
            if param.name != "config":
                assert f"`{param.name}` (" in section, param.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
