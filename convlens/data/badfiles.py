"""Write the list of files a dataset skipped, as a CSV that spreadsheets cannot misread."""

from __future__ import annotations

import csv
from pathlib import Path

from convlens.data.names import valid_text

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: a cell a sheet runs


def write_bad_files(path: str | Path, bad: list[tuple[str, str]]) -> None:
    """`path,reason` rows, quoted by the csv module; formula-like cells get a leading quote."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([_cell(file), _cell(reason)] for file, reason in bad)


def _cell(text: str) -> str:
    text = valid_text(text)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text
