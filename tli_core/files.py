"""Files: atomic writes, reads that report instead of raising, and CSV that is safe in a spreadsheet.

Atomic: a reader (the UI polling a run, a crash, SIGKILL) never sees half a file, and a write
that fails (a full disk) leaves the old file and no temporary behind.

Safe CSV: a text cell starting with ``= + - @`` (or tab / carriage return) is a formula to
Excel, LibreOffice and Sheets. Every CSV the tool writes prefixes such cells with ``'`` (the
spreadsheet convention for "this is text", not shown in the cell), and every CSV it reads takes
the prefix off again, so words round-trip exactly. Numbers stay numbers.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from .errors import TLIError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # what open() would have given, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_output(path: str | Path, data: bytes | str) -> None:
    """A file the user asked for (``--out``, ``--zip``), written atomically; a full disk, a missing folder or a
    permission problem is one TLIError line, not a traceback."""
    try:
        write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise TLIError(f"could not write {path}: {exc.strerror or exc}") from None


def overwrite_in_place(path: str | Path, text: str) -> None:
    """``text`` over the file's own bytes, padded with spaces (JSON ignores them) to its old length.

    The last resort on a full disk: an atomic write needs room for a temporary, this needs none, because
    no block beyond the file's own is touched. Not atomic (a reader at that instant may see a torn file,
    which reads as unreadable), so only for a job's final status when nothing else can be written.
    OSError when the text is longer than the file.
    """
    data = text.encode("utf-8")
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if len(data) > size:
            raise OSError(errno.ENOSPC, "no room to record it in place", str(path))
        fh.seek(0)
        fh.write(data + b" " * (size - len(data)))
        fh.flush()
        os.fsync(fh.fileno())


def disk_full(path: str | Path) -> bool:
    """Whether the filesystem holding ``path`` has (next to) no room left: what a job that died silently there
    most likely died of."""
    try:
        return shutil.disk_usage(path).free < FULL_BELOW
    except OSError:
        return False


FULL_BELOW = 1 << 20


# --------------------------------------------------------------------------- CSV, safe in a spreadsheet

def _needs_quote(s: str) -> bool:
    return s.startswith(FORMULA_START) or (s.startswith("'") and _needs_quote(s[1:]))


def escape_cell(value):
    """``=SUM(A1)`` -> ``'=SUM(A1)``; text that already starts with ``'`` + a formula sign gets one more."""
    return "'" + value if isinstance(value, str) and _needs_quote(value) else value


def unescape_cell(value):
    """The inverse of :func:`escape_cell` (a ``'`` that escape would not have added stays)."""
    return value[1:] if isinstance(value, str) and value.startswith("'") and _needs_quote(value[1:]) else value


def _text_columns(df: pd.DataFrame) -> list:
    return [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]


def safe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy with formula-like text cells (and column names) escaped; numeric columns untouched."""
    out = df.copy()
    for c in _text_columns(out):
        out[c] = out[c].map(escape_cell)
    out.columns = [escape_cell(c) for c in out.columns]
    return out


def unsafe_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`safe_frame` on a table read back from CSV."""
    for c in _text_columns(df):
        df[c] = df[c].map(unescape_cell)
    df.columns = [unescape_cell(c) for c in df.columns]
    return df


def csv_bytes(df: pd.DataFrame, sep: str = ",") -> bytes:
    """The table as spreadsheet-safe UTF-8 CSV (what every download and every written CSV uses)."""
    return safe_frame(df).to_csv(index=False, sep=sep).encode("utf-8")


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    write_bytes(path, csv_bytes(df))


def read_csv(source, **kwargs) -> pd.DataFrame:
    """A CSV written by :func:`write_csv` (or any CSV), with the spreadsheet escapes taken off."""
    kwargs.setdefault("keep_default_na", False)
    kwargs.setdefault("na_values", [""])
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    return unsafe_frame(pd.read_csv(source, **kwargs))


# --------------------------------------------------------------------------- reading

def read_json(path: str | Path, default=None):
    """The JSON in ``path``, or ``default`` if the file is missing, unreadable or not valid JSON."""
    value, _ = read_json_checked(path, default)
    return value


def read_json_checked(path: str | Path, default=None, expect: type | None = None):
    """(value, problem): problem is None, or 'file: reason' when the file exists but cannot be used.

    A missing file is no problem (the default is returned); a truncated, empty, non-UTF-8 or
    wrongly shaped one (``expect``: dict or list) is, and the default is returned with it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            return default, f"{path.name}: empty file"
        value = json.loads(text)
    except FileNotFoundError:
        return default, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else (
            "nested too deeply" if isinstance(exc, RecursionError) else
            f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
            if isinstance(exc, UnicodeDecodeError) else str(exc).splitlines()[0])
        return default, f"{path.name}: {reason or 'empty file'}"
    if expect is not None and not isinstance(value, expect):
        return default, f"{path.name}: expected a JSON {expect.__name__}, found {type(value).__name__}"
    return value, None


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temporary directory into place (replacing an older one)."""
    final = Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
