"""The benchmark pages say where their figures came from, and their goal rows say whether each is met."""

from __future__ import annotations

from pathlib import Path

from bench import pages


def test_a_page_starts_with_the_machine_the_date_and_the_command(tmp_path: Path) -> None:
    lines = pages.header("soak (12 s)", pages.command_line("bench.soak", ["--seconds", "5"]))
    assert lines[0] == "# soak (12 s)"
    assert any(line.startswith("- machine: ") and "cores" in line for line in lines)
    assert any(line.startswith("- date: 20") for line in lines)
    assert "- command: `python -m bench.soak --seconds 5`" in lines
    page = tmp_path / "docs" / "soak.md"
    pages.write(page, [*lines, "", *pages.table(("figure", "value"), [("p99 | max", 3.5)], align="lr")])
    text = page.read_text()
    assert "| figure | value |\n| --- | ---: |\n| p99 \\| max | 3.5 |\n" in text


def test_goal_rows() -> None:
    assert pages.goal("ratio >= 0.8", 0.81, 0.8, "x") == ("ratio >= 0.8", "0.81 x", "met")
    assert pages.goal("ratio >= 0.8", 0.79, 0.8, "x")[2] == "**not met**"
    assert pages.goal("p99 <= 2 ms", 2.5, 2.0, "ms", at_most=True)[2] == "**not met**"
    assert pages.goal("p99 <= 2 ms", 1.5, 2.0, "ms", at_most=True)[2] == "met"
