"""Reading the user's files record for record: nothing lost, nothing invented.

Every reader of user files (`finetune` for every task, `generate`) goes through this module, so
they share one set of rules:

- Text is UTF-8 (a BOM is dropped); anything else is a one-line error. Nothing is translated: a
  `"\\r\\n"` inside a quoted CSV field stays in the text.
- Records end at `"\\n"` (a `"\\r"` before it, CRLF, is dropped with it), as `wc -l` counts them.
  The other characters that Python's `str.splitlines()` also breaks on (U+000B, U+000C,
  U+001C-U+001E, U+0085, U+2028, U+2029) and a lone `"\\r"` are part of the text.
- CSV is parsed by the `csv` module over the whole file (RFC 4180: quoted fields may hold commas,
  quotes and newlines; the csv module also ends an unquoted record at a lone `"\\r"`), strictly:
  an unterminated quote is an error, not a field that swallows the rest of the file.
- TSV is GLUE's convention: one record per line, fields split at tabs, no quoting.
- JSONL is one JSON object per line; blank lines are skipped.
- A record that lacks a value (a missing key, `null`, an empty label cell, a row with fewer or more
  fields than the header, a label that is not a number where one is needed) is never filled in: by
  default the file is refused with a one-line error that names the file, the line and the field;
  with `skip_bad_rows` (`--skip-bad-rows`) such records are dropped and counted in one warning line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

csv.field_size_limit(sys.maxsize)

SKIP_HINT = "pass --skip-bad-rows to drop such rows"
TABLE_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
"""File suffix -> table kind; any other suffix is read as TSV (GLUE's layout)."""


STDIN = "-"
"""The file name that means standard input (`unimask generate --input -`)."""


def read_text(path: str | Path, what: str = "data file") -> str:
    """A user file's text (`-`: standard input), untranslated (a UTF-8 BOM dropped), or a one-line
    UserError when it is missing, not UTF-8 or blank."""
    if str(path) == STDIN:
        path, stream = Path("<standard input>"), getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8")
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"{what} {path} does not exist; pass an existing file")
        data = path.read_bytes()                      # bytes: no "\r" translation
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}); re-encode it as UTF-8") from None
    if not text.strip():
        raise UserError(f"{what} {path} is empty; pass a file with examples")
    return text


def split_records(text: str) -> list[str]:
    """Lines of `text` split at "\\n" only, each without its "\\n" or "\\r\\n"; no empty last line
    after a final newline. Unlike `str.splitlines()`, U+2028, form feeds etc. stay in the line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | Path, what: str = "data file") -> list[str]:
    """The records (lines) of a line-aligned text file, see `split_records`."""
    return split_records(read_text(path, what))


@dataclass
class BadRows:
    """Collects records that lack a value: `close` raises a one-line UserError naming the first (and
    how many more) or, with `skip`, warns once with the count and the first few places."""

    path: Path
    skip: bool = False
    places: list[str] = field(default_factory=list)
    first_problem: str = ""

    def add(self, where: str, problem: str) -> None:
        """`where`: "line 12" or another place in the file; `problem`: what is wrong, e.g.
        "'label' is null"."""
        if not self.places:
            self.first_problem = f"{where}: {problem}"
        self.places.append(where)

    def close(self, total: int, what: str = "rows") -> None:
        """Raise or warn about what `add` collected; `total` records were read."""
        if not self.places:
            return
        more = len(self.places) - 1
        if not self.skip:
            also = f" (and {more} more of the {total} {what})" if more else ""
            raise UserError(f"{self.path} {self.first_problem}{also}; fix the file or {SKIP_HINT}")
        if len(self.places) >= total:
            raise UserError(f"{self.path}: none of its {total} {what} is usable; first: {self.first_problem}; "
                            "fix the file")
        shown = ", ".join(self.places[:5]) + (", ..." if len(self.places) > 5 else "")
        print(f"warning: {self.path}: skipped {len(self.places)} of {total} {what} with a missing or "
              f"invalid value ({shown}); first: {self.first_problem}", file=sys.stderr)


MISSING = object()
"""A field the record does not have (a JSON key that is absent, a row too short for the column)."""


@dataclass
class Table:
    """The records of a TSV, CSV or JSONL file with the line each starts on (1-based).

    TSV/CSV records are lists of strings and `header` names their columns (None for header-less
    files such as CoLA's); JSONL records are dicts and columns are their keys.
    """

    path: Path
    kind: str                                   # "tsv" | "csv" | "jsonl"
    header: list[str] | None
    records: list[tuple[int, list[str] | dict]]

    def column(self, key: str | int) -> str | int:
        """The index (TSV/CSV) or key (JSONL) of column `key`, or a UserError naming the columns."""
        if isinstance(key, int) or self.kind != "jsonl" and self.header is None:
            return key
        if self.kind == "jsonl":
            if any(key in r for _, r in self.records):
                return key
            names = list(dict.fromkeys(k for _, r in self.records[:100] for k in r))
        else:
            if self.header.count(key) > 1:
                raise UserError(f"{self.path} has {self.header.count(key)} columns named {key!r}; rename one")
            if key in self.header:
                return self.header.index(key)
            names = self.header
        raise UserError(f"{self.path} has no column {key!r} (columns: {', '.join(map(str, names))}); "
                        "name an existing column")

    def width(self) -> int | None:
        """Fields every TSV/CSV record must have: the header's, or the first record's when there is
        no header; None for JSONL."""
        if self.kind == "jsonl":
            return None
        return len(self.header) if self.header is not None else len(self.records[0][1])

    def value(self, record: list[str] | dict, column: str | int) -> Any:
        """The raw value of `column` in `record`, or MISSING."""
        if isinstance(record, dict):
            return record.get(column, MISSING)
        return record[column] if column < len(record) else MISSING


def read_table(path: str | Path, header: bool = True) -> Table:
    """A TSV (GLUE layout), CSV or JSONL file (kind from the suffix, see TABLE_KINDS) as records.
    Blank lines hold no record and are skipped; an undecodable, unparseable or header-only file is a
    one-line UserError."""
    path = Path(path).expanduser()
    text = read_text(path)
    kind = TABLE_KINDS.get(path.suffix.lower(), "tsv")
    records: list[tuple[int, Any]] = []
    if kind == "jsonl":
        for n, line in enumerate(split_records(text), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not JSON ({e}); write one JSON object per line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path} line {n} holds a {type(record).__name__}, not a JSON object; "
                                "write one object per line")
            records.append((n, record))
        return Table(path, kind, None, records)
    if kind == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        start = 1
        try:
            for row in reader:
                records.append((start, row))
                start = reader.line_num + 1
        except csv.Error as e:
            raise UserError(f"{path} line {start} is not valid CSV ({e}); check its quotes") from None
    else:
        records = [(n, line.split("\t")) for n, line in enumerate(split_records(text), 1)]
    records = [(n, row) for n, row in records if any(cell.strip() for cell in row)]
    if not header:
        return Table(path, kind, None, records)
    if not records:
        raise UserError(f"{path} has no header row; add one naming the columns")
    names = [cell.strip() for cell in records[0][1]]
    return Table(path, kind, names, records[1:])


def as_text(value: Any) -> str | None:
    """A text field's string, or None when the value cannot be a text (missing, null, a list, ...).
    Numbers are texts as the file writes them (JSON 12 -> "12")."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    return None


def describe(value: Any, name: str) -> str:
    """What is wrong with `value` as field `name`, for error and warning lines."""
    if value is MISSING:
        return f"no {name!r} field"
    if value is None:
        return f"{name!r} is null"
    if isinstance(value, str) and not value.strip():
        return f"{name!r} is empty"
    return f"{name!r} is {json.dumps(value)[:40]}"


def as_label(value: Any) -> str | None:
    """A class label as the file writes it: strings stripped; JSON numbers and booleans as their JSON
    text (1 -> "1", true -> "true"); None for a missing, null, empty or structured value."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


def as_number(value: Any) -> float | None:
    """A regression target: a JSON number or a number written as text ("3.5"); None when it is
    missing, null, not a number, or not finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None
