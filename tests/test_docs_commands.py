"""docs/engine-cli.md documents every `nsbox` command and README.md links every page.

Pure checks of the text against the CLI's own tables (COMMANDS, GROUPS), so a
command added without its documentation fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from nsbox.engine.cli import COMMANDS, GROUPS

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = (ROOT / "docs" / "engine-cli.md").read_text()


def _mentioned(phrase: str) -> bool:
    """PHRASE starts a code span (`phrase`, `phrase ARGS`, `phrase|other`) or a section title."""
    words = r"\s+".join(re.escape(w) for w in phrase.split())
    return re.search(rf"`(nsbox\s+)?{words}(?=[`\s|\[])", CLI_DOC) is not None


def test_every_command_is_documented() -> None:
    missing = [name for name in COMMANDS if not _mentioned(name)]
    assert not missing, f"docs/engine-cli.md does not mention: {missing}"


def test_every_group_subcommand_is_documented() -> None:
    """Each module a group reaches has one of its names documented (aliases may go unsaid);
    `container X` is covered by the top-level command X, a `container|image` listing by
    `group a|b|c`."""
    missing = []
    for group, subs in GROUPS.items():
        by_module: dict[str, list[str]] = {}
        for sub, module in subs.items():
            by_module.setdefault(module, []).append(sub)
        listing = " ".join(re.findall(rf"`{group} ([^`]*)`", CLI_DOC))
        listed = set(re.split(r"[|\s\[\]]+", listing))
        for names in by_module.values():
            if group == "container" and any(n in COMMANDS for n in names):
                continue
            if not any(_mentioned(f"{group} {n}") or n in listed for n in names):
                missing.append(f"{group} {'|'.join(names)}")
    assert not missing, f"docs/engine-cli.md does not mention: {missing}"


def test_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert not pages - linked, f"README.md does not link: {sorted(pages - linked)}"
    assert not linked - pages, f"README.md links missing pages: {sorted(linked - pages)}"
