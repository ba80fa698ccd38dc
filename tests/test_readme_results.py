"""The README's results tables are the report's summary.md as last generated: regenerating the
report without updating the README (or editing a number by hand) fails here."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def table_blocks(text: str) -> list[str]:
    """Each run of consecutive Markdown table lines, joined."""
    blocks, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def test_the_readme_quotes_every_table_of_the_protocol_summary_as_generated():
    summary = (REPO / "docs" / "results" / "paper" / "summary.md").read_text()
    readme = (REPO / "README.md").read_text()
    tables = table_blocks(summary)
    assert len(tables) >= 2  # Table 1 and the paired table at least
    readme_tables = table_blocks(readme)
    for table in tables:
        assert table in readme_tables, f"README is missing or has changed this summary.md table:\n{table}"
