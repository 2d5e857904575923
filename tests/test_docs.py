"""The documentation against the code: the flag table of docs/usage.md is `--help`'s, the
README stays short, and every relative link in README.md and docs/*.md leads to a file.

The flag table is generated from the parser; after a flag changes, rewrite it with

    .venv/bin/python tests/test_docs.py --write
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
USAGE = ROOT / "docs" / "usage.md"
README_MAX_WORDS = 1200

TABLE_HEADER = "| flag | default | meaning |"
# `(default: ...)` closes every help text that states a default (fastconv.cli.build_parser).
DEFAULT_AT_END = re.compile(r"\s*\(default: (?P<default>.*)\)\s*$", re.DOTALL)
# [text](target) or ![alt](target), the target up to a space or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)


def parser() -> argparse.ArgumentParser:
    from fastconv.cli import build_parser  # no TensorFlow import

    return build_parser()


def flag_rows() -> list[tuple[str, str, str]]:
    """(flag, default, meaning) for each option of `scripts/train.py --help`, in its order."""
    rows = []
    for action in parser()._actions:
        if action.nargs == 0:  # a switch: --xla, --no-xla
            flag = ", ".join(f"`{name}`" for name in action.option_strings)
        else:
            if action.metavar is not None:
                value = action.metavar
            elif action.choices is not None:
                value = "{" + ",".join(map(str, action.choices)) + "}"
            else:
                value = action.dest.upper()
            flag = ", ".join(f"`{name} {value}`" for name in action.option_strings)
        text = " ".join((action.help or "").split())
        found = DEFAULT_AT_END.search(text)
        if found:
            default, meaning = found["default"], text[: found.start()]
        else:
            default, meaning = ("off" if action.nargs == 0 else "none"), text
        if isinstance(action, argparse._HelpAction):
            default = "-"
        rows.append((flag, markdown(default), markdown(meaning)))
    return rows


def markdown(text: str) -> str:
    """Help text as a table cell shows it: `|` would end the cell, `<date-time>` an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def flag_table() -> str:
    lines = [TABLE_HEADER, "|---|---|---|"]
    lines += [f"| {flag} | {default} | {meaning} |" for flag, default, meaning in flag_rows()]
    return "\n".join(lines) + "\n"


def documented_table(text: str) -> tuple[int, int]:
    """The line span [start, end) of the flag table in docs/usage.md."""
    lines = text.splitlines()
    start = lines.index(TABLE_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start, end = documented_table(text)
    rows = []
    for line in lines[start + 2 : end]:
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip() for cell in cells])
    return rows


def flags_in(cell: str) -> set[str]:
    """The flags named in a table's first cell: `--epochs N` names --epochs."""
    return {code.split()[0] for code in re.findall(r"`([^`]+)`", cell)}


def test_usage_documents_exactly_the_flags_of_help():
    printed = {name for action in parser()._actions for name in action.option_strings}
    documented = set()
    for row in table_rows(USAGE.read_text()):
        documented |= flags_in(row[0])
    missing, extra = sorted(printed - documented), sorted(documented - printed)
    assert not missing and not extra, (
        f"docs/usage.md lacks {missing} and has {extra} that --help does not print; "
        "rewrite the table: python tests/test_docs.py --write"
    )


def test_usage_flag_table_says_what_help_says():
    rows = table_rows(USAGE.read_text())
    expected = [list(row) for row in flag_rows()]
    assert rows == expected, (
        "docs/usage.md's flag table differs from --help's defaults or meanings; "
        "rewrite it: python tests/test_docs.py --write"
    )


def test_readme_is_at_most_1200_words():
    words = len(README.read_text().split())  # as `wc -w` counts them
    assert words <= README_MAX_WORDS, f"README.md has {words} words, over {README_MAX_WORDS}"


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens."""
    text = FENCE.sub("", path.read_text())
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_relative_links_lead_to_files_that_exist():
    assert (ROOT / "docs").is_dir()
    broken = []
    for document in documents():
        text = FENCE.sub("", document.read_text())
        for link in LINK.finditer(text):
            target = link["target"]
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (document.parent / path).resolve() if path else document
            name = f"{document.relative_to(ROOT)}: {target}"
            if not file.exists():
                broken.append(f"{name} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                broken.append(f"{name} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def test_every_document_is_linked_from_the_readme():
    linked = {
        (ROOT / link["target"].partition("#")[0]).resolve()
        for link in LINK.finditer(README.read_text())
    }
    unlinked = [str(p.relative_to(ROOT)) for p in documents()[1:] if p.resolve() not in linked]
    assert not unlinked, f"README.md links to none of {unlinked}"


def write_table() -> None:
    """Rewrites the flag table of docs/usage.md from the parser."""
    text = USAGE.read_text()
    lines = text.splitlines(keepends=True)
    start, end = documented_table(text)
    USAGE.write_text("".join(lines[:start]) + flag_table() + "".join(lines[end:]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
    else:
        print(flag_table(), end="")
