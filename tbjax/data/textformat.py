"""Text and number format of raw CSV tables: field separator, decimal mark, strict numbers.

CSV fields may be separated by ``,``, ``;``, tab or ``|`` (the separator that splits the first
line into the most fields). In a comma-separated file the decimal mark is ``.``; in any other
file it is ``,`` when some number settles it (``1234,5``, ``0,25``), else ``.``. Numbers are never
guessed at: a value with a thousands separator (``1,234.5``), the other decimal mark, or a ``,``
that could be either (``1,234`` with nothing else in the file deciding) stops with an error naming
file, column and data row (rows count from 1 after the header).

Every row must have as many fields as the header (``check_field_counts``): a row with more or
fewer is refused with its file, line, field count and a fix, because its values would land under
the wrong names (an unquoted "1,234.5" in a comma-separated file is two fields, and every later
value moves one column right). The one exception are surplus fields that are all empty
(``...,12.5,,``, a spreadsheet's trailing separators): they carry nothing, so they are dropped and
counted.

The reader records the separator and decimal mark it used in the Arrow schema metadata
(``with_number_format``), so later readers of the table's columns (``float_column``) parse numbers
in the same convention (``number_format``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from tbjax.errors import InputError

DELIMITERS = (",", ";", "\t", "|")  # ties go to the earlier one
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
DECIMAL_KEY = b"tbjax.decimal"      # Arrow schema metadata: the decimal mark of a CSV's numbers
DELIMITER_KEY = b"tbjax.delimiter"
TRAILING_EMPTY_KEY = b"tbjax.trailing_empty_rows"  # rows whose surplus fields were empty (dropped)
# "1,234" (1-3 digits, a comma, exactly three digits) is 1.234 with a decimal comma or 1234 with a
# thousands separator: such a value alone never decides the decimal mark of a file.
_COMMA_GROUPED = r"[+-]?[1-9]\d{0,2},\d{3}"
_COMMA_NUMBER = r"[+-]?\d*,\d+"
_DOT_NUMBER = r"[+-]?\d*\.\d+"
_THOUSANDS = re.compile(r"[+-]?\d{1,3}([,. '\u00a0\u202f\u2019])\d{3}(\1\d{3})*([.,]\d+)?")


def looks_numeric(field: str) -> bool:
    """True for a CSV field that reads as a number (a header-less file's first field)."""
    try:
        float(field.strip().strip('"'))
    except ValueError:
        return False
    return True


def sniff_delimiter(first_line: str) -> str:
    """The field separator that splits the header (or first row) into the most fields.

    European spreadsheets write ';' (their decimal mark is ','), databases often tab or '|'.
    Read with the wrong one, the whole line becomes one column and nothing else is found.
    Quotes are honoured, so a quoted "1,5" in a ';' file does not count as a split.
    """
    if not first_line:
        return ","
    counts = {d: len(next(csv.reader([first_line], delimiter=d))) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))


def _text_cells(frame: pd.DataFrame, skip) -> list[tuple[str, pd.Series]]:
    """(column name, stripped text) of every text column whose name is not in ``skip``."""
    return [(name, frame[name].astype("string").str.strip()) for name in frame.columns
            if name not in skip and not pd.api.types.is_numeric_dtype(frame[name])]


def sniff_decimal(frame: pd.DataFrame, path: Path, delimiter: str, skip=()) -> str:
    """The decimal mark of a CSV read as text, from every number in it (see module doc).

    A comma-separated file cannot hold a bare decimal comma, so its mark is '.'. Elsewhere one
    unambiguous comma number ("1234,5", "0,25", "12,5") makes it ','. If the only commas are
    "1,234"-shaped and no '.' number settles it, the file is refused rather than guessed.
    Columns named in ``skip`` (time, symbol) are not looked at.
    """
    if delimiter == ",":
        return "."
    comma = dot = ambiguous = None
    for name, text in _text_cells(frame, set(skip)):
        grouped = text.str.fullmatch(_COMMA_GROUPED).fillna(False)
        if comma is None and (text.str.fullmatch(_COMMA_NUMBER).fillna(False) & ~grouped).any():
            comma = name
        if dot is None and text.str.fullmatch(_DOT_NUMBER).fillna(False).any():
            dot = name
        if ambiguous is None and grouped.any():
            row = int(np.flatnonzero(grouped.to_numpy())[0])
            ambiguous = (name, row, text.iloc[row])
    if comma is not None:
        return ","
    if ambiguous is not None and dot is None:
        name, row, value = ambiguous
        raise InputError(
            f"file {path}, column '{name}', data row {row + 1}: {value!r} could be a decimal comma "
            f"or a thousands separator and no other number in the file settles it; save the file "
            f"with '.' as the decimal mark and no thousands separators (e.g. 1234.5)")
    return "."


def _field_count_fix(fields: int, width: int, delimiter: str, text: str) -> str:
    """Why a row has ``fields`` fields where ``width`` are expected, and how to fix it (one clause)."""
    if text.count('"') % 2:
        return ("a quote (\") opened here is never closed, so the rest of the file reads as one value; "
                "close it or remove it")
    if fields < width:
        return ("the row is cut short (an interrupted download or a lost separator); complete it, leaving "
                "a missing value empty between separators, or delete the line")
    if delimiter == ",":
        return ("a value with an unquoted ',' (a digit-grouping comma as in 1,234.5, or a decimal comma) "
                "splits into two fields and moves every later value one column right; save the numbers "
                "without digit grouping and with '.' as the decimal mark (1234.5), quote such values, or "
                "remove the extra fields")
    return (f"a value holds an unquoted {_DELIMITER_NAMES[delimiter]} or the row has extra values; quote "
            f"such values or remove the extra fields")


def check_field_counts(path: Path, delimiter: str, columns, has_header: bool) -> tuple[int, int]:
    """Refuse rows whose field count differs from the header's ``columns`` (the 12 Binance names
    for a header-less dump); returns (rows whose surplus fields are all empty, the most fields in a
    row). A row may lack only header columns that have no name (a header ending in separators).

    Arrow's CSV parser hands every row of the wrong width to ``invalid_row_handler`` with its
    physical row number (serial parsing); the file is tokenised once and no value is converted
    (the one column asked for does not exist: a column of nulls, no memory). Lines count as an
    editor shows them (header = line 1); blank lines are skipped as pandas does.
    """
    width = len(columns)
    named = width - next((i for i, name in enumerate(reversed(columns)) if str(name).strip()), width)
    bad, trailing, widest = [], [0], [width]

    def handler(row) -> str:
        try:
            cells = next(csv.reader(row.text.splitlines(keepends=True), delimiter=delimiter), [])
        except csv.Error:  # not parseable on its own: certainly not just empty surplus fields
            cells = [row.text]
        if row.actual_columns > width and not any(c.strip() for c in cells[width:]):
            trailing[0] += 1
            widest[0] = max(widest[0], row.actual_columns)
        elif row.text.strip() and not named <= row.actual_columns < width:  # blanks: a blank line
            bad.append(row)
        return "skip"

    pa_csv.read_csv(path, pa_csv.ReadOptions(use_threads=False, skip_rows=int(has_header),
                                             column_names=[f"f{i}" for i in range(width)]),
                    pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True, ignore_empty_lines=False,
                                        invalid_row_handler=handler),
                    pa_csv.ConvertOptions(include_columns=["none"], include_missing_columns=True))
    if bad:
        row, shown = bad[0], bad[0].text if len(bad[0].text) <= 80 else bad[0].text[:77] + "..."
        line = f"line {row.number}" if row.number is not None else "a row"
        first = "the header (line 1)" if has_header else "a Binance kline row"
        more = f" ({len(bad) - 1} more row(s) with a wrong number of fields)" if len(bad) > 1 else ""
        raise InputError(f"file {path}, {line}: {row.actual_columns} fields where {first} has {width}: "
                         f"{shown!r}{more}; {_field_count_fix(row.actual_columns, width, delimiter, row.text)}")
    return trailing[0], widest[0]


def with_number_format(table: pa.Table, decimal: str, delimiter: str, trailing_empty_rows: int = 0) -> pa.Table:
    """``table`` with its CSV's decimal mark, field separator and the number of rows whose empty
    surplus fields were dropped in the schema metadata."""
    metadata = dict(table.schema.metadata or {})
    metadata.update({DECIMAL_KEY: decimal.encode(), DELIMITER_KEY: delimiter.encode()})
    if trailing_empty_rows:
        metadata[TRAILING_EMPTY_KEY] = str(int(trailing_empty_rows)).encode()
    return table.replace_schema_metadata(metadata)


def number_format(table: pa.Table) -> tuple[str, str]:
    """(decimal mark, field separator) a table was read with; ('.', ',') for parquet/feather."""
    metadata = table.schema.metadata or {}
    return (metadata.get(DECIMAL_KEY, b".").decode(), metadata.get(DELIMITER_KEY, b",").decode())


def trailing_empty_rows(table: pa.Table) -> int:
    """Rows of the CSV whose empty surplus fields were dropped (0 for parquet/feather)."""
    return int((table.schema.metadata or {}).get(TRAILING_EMPTY_KEY, b"0"))


def _number_problem(value: str, decimal: str, delimiter: str) -> str:
    """Why a text cell with digits is not a number here, and how to fix it (one clause)."""
    if _THOUSANDS.fullmatch(value):  # "1,234.5", "1.234,5", "1 234": grouped, never a plain number
        return ("has a thousands separator; save the numbers without digit grouping "
                "(e.g. 1234.5) and run prepare again")
    if decimal == "." and "," in value:
        return (f"uses a decimal comma in a file separated by {_DELIMITER_NAMES[delimiter]}, "
                f"where the decimal mark is '.'; save the file with ';' between fields or with "
                f"'.' as the decimal mark")
    if decimal == "," and "." in value:
        return ("uses '.' as the decimal mark while other numbers in the file use ','; save the "
                "file with one decimal mark")
    return "is not a number; fix the cell or leave it empty (the row is then dropped and counted)"


def parse_numbers(text, where: str, decimal: str = ".", delimiter: str = ",") -> np.ndarray:
    """Text cells → float64 in the file's convention; NaN for empty or word cells (n/a, null, -).

    A cell with digits that is not a plain number in that convention ("1,234.5", "12.5 USD",
    "1.5" in a decimal-comma file) stops with its data row: reading it as NaN would silently
    drop the bar, reading it any other way would be a guess.
    """
    cells = pd.Series(np.asarray(text, dtype=object), dtype="string").str.strip()
    plain = cells
    if decimal == ",":
        plain = cells.str.replace(",", ".", regex=False).where(
            ~cells.str.contains(".", regex=False).fillna(False))
    values = pd.to_numeric(plain.astype(object), errors="coerce").astype(np.float64)
    bad = values.isna() & cells.str.contains(r"\d", regex=True).fillna(False)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        more = f" ({int(bad.sum()) - 1} more cell(s) like it)" if bad.sum() > 1 else ""
        raise InputError(f"{where}, data row {row + 1}: {cells.iloc[row]!r}{more} "
                         f"{_number_problem(cells.iloc[row], decimal, delimiter)}")
    return values.to_numpy(np.float64)


def float_column(column: pa.ChunkedArray, where: str = "column", decimal: str = ".",
                 delimiter: str = ",") -> np.ndarray:
    """Any column → float64 with NaN for nulls; text goes through ``parse_numbers``."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    text = column.cast(pa.string()).to_numpy(zero_copy_only=False)
    return parse_numbers(text, where, decimal, delimiter)
