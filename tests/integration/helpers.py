"""Test-side readers and writers of competition CSV files, independent of the app's csvio."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tests.conftest import TEST_CSV

INT_COLUMNS = ("PassengerId", "Pclass", "SibSp", "Parch")
FLOAT_COLUMNS = ("Age", "Fare")


def kaggle_rows(path: Path) -> list[dict[str, Any]]:
    """Read a competition CSV into JSON-like passengers, independently of the app's csvio."""
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            row.pop("Survived", None)
            clean: dict[str, Any] = {}
            for name, text in row.items():
                if text == "":
                    clean[name] = None
                elif name in INT_COLUMNS:
                    clean[name] = int(text)
                elif name in FLOAT_COLUMNS:
                    clean[name] = float(text)
                else:
                    clean[name] = text
            rows.append(clean)
    return rows


def csv_with_cell(change_line: int, column: str, value: str) -> str:
    """test.csv's text with one cell replaced (line numbers count the header as 1)."""
    lines = TEST_CSV.read_text().splitlines()
    reader = csv.reader([lines[change_line - 1]])
    cells = next(reader)
    header = lines[0].split(",")
    cells[header.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    lines[change_line - 1] = out.getvalue()
    return "\n".join(lines) + "\n"
