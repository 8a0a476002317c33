"""The README's bad-input tables are the tests' own tables: same inputs, messages that contain what the
tests check, exit code 2. A case added to a test (or to the README) without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cases import BAD_DATA, BAD_INPUTS, BAD_OPTIONS

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_table(heading: str) -> dict[str, tuple[str, str]]:
    """{input: (message, exit code)} of the table under ``### heading`` in the README's Bad input section."""
    section = README.read_text().split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    table = section.split(f"\n### {heading}\n", 1)[1].split("\n### ", 1)[0]
    rows = {}
    for line in [line for line in table.splitlines() if line.startswith("|")][2:]:  # after header and rule
        name, message, code = (cell.strip() for cell in line.strip("|").split(" | "))
        assert name.strip("`") not in rows, f"README: {name} appears twice"
        rows[name.strip("`")] = (message.strip("`"), code)
    return rows


def expected(heading: str) -> dict[str, str]:
    """{input: words its message must contain}, from the tests' tables."""
    if heading == "`jobs/segment.py`":
        return {name: words for name, _, words in BAD_INPUTS}
    return {**{case: words for case, (_, words, *_) in BAD_DATA.items()},
            **{" ".join(options): words for options, words in BAD_OPTIONS}}


@pytest.mark.parametrize("heading", ["`jobs/segment.py`", "`jobs/train.py`"])
def test_readme_bad_input_table_matches_the_tests(heading):
    rows, cases = readme_table(heading), expected(heading)
    assert sorted(rows) == sorted(cases), "README and tests list different bad inputs"
    for name, words in cases.items():
        message, code = rows[name]
        assert words in message and message.startswith("error: ") and code == "2", (name, message, code)


def test_readme_documents_exit_codes_and_the_failure_list():
    text = README.read_text()
    codes = re.findall(r"^\| `(\d)` \|", text, flags=re.MULTILINE)
    assert codes == ["0", "2", "3"]
    for field in ('"failed"', '"rows"', '"cols"', '"level"', '"output"', '"error"'):
        assert field in text
