"""Spreadsheets in and out: CSV, XLSX and JSONL, every cell a string, written atomically.

Why strings: a label column of "1"/"0" or an id like "007" must come back as it went in
(pandas would make numbers of them). Why atomic: a crash or Ctrl-C while writing must never
leave a half-written output where a previous complete one (or nothing) was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_backend.model_store import atomic_write_bytes

FORMATS = {".csv": "csv", ".tsv": "tsv", ".xlsx": "xlsx", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class InputFileError(ValueError):
    """A file that cannot be read as a table; the message says what to do (one line)."""


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, str]]
    format: str
    encoding: str | None = None  # CSV/TSV: what it was decoded with

    def require_column(self, column: str, flag: str) -> None:
        if column not in self.columns:
            shown = ", ".join(self.columns[:12]) + (" ..." if len(self.columns) > 12 else "")
            raise InputFileError(f"no column {column!r} in the file (columns: {shown}); choose one with {flag}")


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputFileError(f"{path.name}: unknown file type {path.suffix!r}; use .csv, .tsv, .xlsx or .jsonl")
    return fmt


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN: an empty cell
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def decode(raw: bytes, encoding: str | None, name: str) -> tuple[str, str]:
    """The file's text and the encoding used: `encoding` if given, else UTF-8 (BOM or not), else
    the best guess of charset-normalizer (GB18030, Big5, Shift-JIS, cp1252, ...)."""
    if encoding:
        try:
            return raw.decode(encoding), encoding
        except LookupError:
            raise InputFileError(f"unknown encoding {encoding!r} (try utf-8, gb18030, big5, cp1252)") from None
        except UnicodeDecodeError as exc:
            raise InputFileError(
                f"{name} is not valid {encoding} (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); "
                "pass the file's real encoding with --encoding, e.g. --encoding gb18030"
            ) from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise InputFileError(f"{name}: cannot tell its text encoding; pass it with --encoding (e.g. gb18030)")
    return str(best), best.encoding


def read_table(path: Path, *, encoding: str | None = None) -> Table:
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise InputFileError(f"no such file: {path}")
    if fmt == "xlsx":
        table = _read_xlsx(path)
    else:
        text, used = decode(path.read_bytes(), encoding, path.name)
        table = _read_jsonl(text, path.name) if fmt == "jsonl" else _read_delimited(text, fmt, path.name)
        table.encoding = used
    if not table.rows:
        raise InputFileError(f"{path.name} has no data rows: nothing to label")
    return table


def _read_delimited(text: str, fmt: str, name: str) -> Table:
    import csv
    import io

    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
        lines = [line for line in reader if any(cell.strip() for cell in line)]
    except csv.Error as exc:
        raise InputFileError(f"{name}: not a readable {fmt.upper()} file ({exc})") from None
    if not lines:
        raise InputFileError(f"{name} is empty: it needs a header row and data rows")
    header = [h.strip() for h in lines[0]]
    if len(set(header)) != len(header) or not all(header):
        raise InputFileError(f"{name}: the header row needs distinct, non-empty column names (got {header})")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) > len(header):
            raise InputFileError(f"{name}, line {number}: {len(line)} cells but {len(header)} columns "
                                 "(a text with a comma needs quotes)")
        rows.append({column: (line[i] if i < len(line) else "") for i, column in enumerate(header)})
    return Table(columns=header, rows=rows, format=fmt)


def _read_jsonl(text: str, name: str) -> Table:
    columns: list[str] = []
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"{name}, line {number}: not JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise InputFileError(f"{name}, line {number}: a JSON object is needed, got {type(record).__name__}")
        for key in record:
            if key not in columns:
                columns.append(key)
        rows.append({key: _cell(value) for key, value in record.items()})
    for row in rows:
        for column in columns:
            row.setdefault(column, "")
    return Table(columns=columns, rows=rows, format="jsonl")


def _read_xlsx(path: Path) -> Table:
    import zipfile

    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputFileError(f"{path.name}: not a readable Excel workbook ({type(exc).__name__}); "
                             "save it again as .xlsx, or export it as CSV") from None
    try:
        sheet = workbook.worksheets[0]
        lines = [list(row) for row in sheet.iter_rows(values_only=True)]
    finally:
        workbook.close()
    lines = [line for line in lines if any(_cell(v).strip() for v in line)]
    if not lines:
        raise InputFileError(f"{path.name}: its first sheet is empty: it needs a header row and data rows")
    header = [_cell(v).strip() for v in lines[0]]
    while header and not header[-1]:
        header.pop()
    if len(set(header)) != len(header) or not all(header):
        raise InputFileError(f"{path.name}: the first row needs distinct, non-empty column names (got {header})")
    rows = [{column: _cell(line[i]) if i < len(line) else "" for i, column in enumerate(header)} for line in lines[1:]]
    return Table(columns=header, rows=rows, format="xlsx")


# --- writing -------------------------------------------------------------------------------------
def table_bytes(columns: list[str], rows: list[dict[str, str]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps({c: row.get(c, "") for c in columns}, ensure_ascii=False) + "\n"
                       for row in rows).encode("utf-8")
    if fmt in ("csv", "tsv"):
        import csv
        import io

        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row.get(c, "") for c in columns] for row in rows])
        return buffer.getvalue().encode("utf-8")
    if fmt == "xlsx":
        import io

        from openpyxl import Workbook

        workbook = Workbook(write_only=True)
        sheet = workbook.create_sheet("labels")
        sheet.append(columns)
        for row in rows:
            sheet.append([row.get(c, "") for c in columns])
        buffer = io.BytesIO()
        workbook.save(buffer)
        return buffer.getvalue()
    raise InputFileError(f"cannot write format {fmt!r}")


def write_table(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    atomic_write_bytes(path, table_bytes(columns, rows, file_format(Path(path))))
