"""Word pairs: load, validate, normalise, split, and check trained/control leakage.

A pair set is a pandas DataFrame with at least the columns ``swahili`` and ``english``
(extra columns such as ``category`` are kept). Loading returns the frame together with a
:class:`PairReport` that says exactly what was changed or dropped, so the UI can show it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import TLIError
from .files import csv_bytes, unescape_cell

FORMATS = ("csv", "tsv", "json", "jsonl")
MAX_PAIRS = 100_000
MAX_BYTES = 64 * 2**20
# Accepted header names, lower-cased; the first of each pair is the canonical one.
COLUMN_ALIASES = {"swahili": "swahili", "source": "swahili", "english": "english", "target": "english"}
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_TRAINED = ASSETS / "pairs_trained.csv"
DEFAULT_CONTROL = ASSETS / "pairs_control.csv"


@dataclass
class PairReport:
    """What loading did to a file: every dropped or changed row is listed by its row number."""

    source: str
    rows_read: int = 0
    kept: int = 0
    normalised: int = 0  # rows whose text changed under NFC / whitespace trimming
    empty_rows: list[int] = field(default_factory=list)  # 1-based data rows with an empty word
    duplicate_rows: list[int] = field(default_factory=list)  # exact repeats of an earlier pair
    ambiguous_swahili: list[str] = field(default_factory=list)  # same Swahili, different English
    ambiguous_english: list[str] = field(default_factory=list)  # same English, different Swahili

    def lines(self) -> list[str]:
        out = [f"{self.source}: {self.rows_read} rows read, {self.kept} pairs kept"]
        if self.normalised:
            out.append(f"{self.normalised} rows normalised (Unicode NFC, surrounding spaces trimmed)")
        if self.empty_rows:
            out.append(f"{len(self.empty_rows)} rows dropped for an empty word: rows {_short(self.empty_rows)}")
        if self.duplicate_rows:
            out.append(f"{len(self.duplicate_rows)} duplicate pairs dropped: rows {_short(self.duplicate_rows)}")
        if self.ambiguous_swahili:
            out.append(f"Swahili words with several English translations: {_short(self.ambiguous_swahili)}")
        if self.ambiguous_english:
            out.append(f"English words with several Swahili translations: {_short(self.ambiguous_english)}")
        return out


@dataclass
class LeakageReport:
    """Overlap between a trained and a control set (the control set must be unseen).

    An identical pair in both sets is leakage. A Swahili word in both sets with *different*
    translations (the authors' lists share kioo: mirror / glass and kufunga: close / tie) is a
    different sense, and only a warning; so is a shared English word.
    """

    same_pair: list[tuple[str, str]]
    same_swahili: list[str]  # Swahili words in both sets (with the same or different translations)
    same_english: list[str]

    @property
    def leaks(self) -> bool:
        return bool(self.same_pair)

    @property
    def shared_headwords(self) -> list[str]:
        """Swahili words in both sets that are not part of an identical pair."""
        paired = {s for s, _ in self.same_pair}
        return [s for s in self.same_swahili if s not in paired]

    def leak_lines(self) -> list[str]:
        return [f"{len(self.same_pair)} pairs are in both sets: " + _short([f"{s}–{e}" for s, e in self.same_pair])] \
            if self.same_pair else []

    def warning_lines(self) -> list[str]:
        out = []
        if self.shared_headwords:
            out.append(f"{len(self.shared_headwords)} Swahili words are in both sets with different translations "
                       f"(different senses, allowed): {_short(self.shared_headwords)}")
        if self.same_english:
            out.append(f"{len(self.same_english)} English words are in both sets (allowed, but retrieval "
                       f"on them is not unseen): {_short(self.same_english)}")
        return out

    def lines(self) -> list[str]:
        return (self.leak_lines() + self.warning_lines()) or ["no overlap between trained and control sets"]


def _short(items, n: int = 12) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f" … (+{len(items) - n} more)" if len(items) > n else "")


def _shown(word: str, n: int = 40) -> str:
    """A word as the escaped literal a one-line message can show (control characters written as \\x00, \\n)."""
    shown = "".join(ch.encode("unicode_escape").decode() if unicodedata.category(ch) == "Cc" else ch
                    for ch in word[:n])
    return f"'{shown}'" + ("..." if len(word) > n else "")


def normalise_word(text: str) -> str:
    """NFC-normalise, trim and collapse inner runs of whitespace (multi-word expressions stay)."""
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TLIError(f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                       f"save it as UTF-8 and try again") from None


def _detect_format(source: str, fmt: str | None) -> str:
    if fmt:
        fmt = fmt.lower().lstrip(".")
    else:
        suffix = Path(source).suffix.lower().lstrip(".")
        fmt = {"txt": "tsv", "ndjson": "jsonl"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise TLIError(f"{source}: unknown pair-file format {fmt!r}; use one of {', '.join(FORMATS)} "
                       f"(by file extension, or say which)")
    return fmt


class _RepeatedKey(ValueError):
    pass


def _no_repeated_keys(items: list[tuple]) -> dict:
    """json's object hook: an object naming a key twice (json keeps the last silently) is refused."""
    keys = [k for k, _ in items]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise _RepeatedKey(", ".join(map(repr, repeated)))
    return dict(items)


def _records_from_text(text: str, fmt: str, source: str) -> list[dict]:
    if fmt in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
        if reader.fieldnames is None:
            raise TLIError(f"{source} is empty: expected a header row with columns swahili,english")
        header = [unescape_cell(str(h).strip()) for h in reader.fieldnames]
        repeated = sorted({h for h in header if header.count(h) > 1 and h})
        if repeated:
            raise TLIError(f"{source}: the header names column(s) {', '.join(repeated)} more than once; "
                           f"keep one of each")
        rows = []
        try:
            for row in reader:
                rows.append({unescape_cell(str(k).strip()) if k is not None else None: unescape_cell(v)
                             for k, v in row.items()})
                _check_size(len(rows), source)
        except csv.Error as exc:
            limit = csv.field_size_limit()
            reason = (f"a field is longer than {limit // 1024} KiB (a word pair file holds words, not documents)"
                      if "field limit" in str(exc) else str(exc))
            raise TLIError(f"{source}: line {reader.line_num + 1}: {reason}") from None
        return rows
    if fmt == "json":
        try:
            obj = json.loads(text, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as exc:
            raise TLIError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        except RecursionError:
            raise TLIError(f"{source}: the JSON is nested too deeply to be a list of word pairs") from None
        except _RepeatedKey as exc:
            raise TLIError(f"{source}: an object names the key(s) {exc} more than once; keep one") from None
        if isinstance(obj, dict) and "pairs" in obj:
            obj = obj["pairs"]
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise TLIError(f"{source}: JSON must be a list of objects with keys swahili and english, "
                           f'or {{"pairs": [...]}}')
        return obj
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as exc:
            raise TLIError(f"{source}: line {lineno} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise TLIError(f"{source}: line {lineno} is nested too deeply to be a word pair") from None
        except _RepeatedKey as exc:
            raise TLIError(f"{source}: line {lineno} names the key(s) {exc} more than once; keep one") from None
        if not isinstance(rec, dict):
            raise TLIError(f"{source}: line {lineno} must be a JSON object with keys swahili and english")
        records.append(rec)
        _check_size(len(records), source)
    return records


def max_pairs() -> int:
    """The most pairs a file may hold (``TLI_MAX_PAIRS``, default 100,000): a scan embeds every word."""
    try:
        return max(1, int(os.environ.get("TLI_MAX_PAIRS", MAX_PAIRS)))
    except ValueError:
        return MAX_PAIRS


def _check_size(n: int, source: str) -> None:
    if n > max_pairs():
        raise TLIError(f"{source} holds more than {max_pairs():,} pairs; split it, or raise the limit with the "
                       f"TLI_MAX_PAIRS environment variable")


def _canonical_columns(records: list[dict], source: str) -> dict[str, str]:
    """Map the file's column names to swahili/english, or say which columns were found."""
    found: list[str] = []
    for rec in records[:50]:
        found += [k for k in rec if k not in found]
    mapping: dict[str, str] = {}
    for name in found:
        canon = COLUMN_ALIASES.get(str(name).strip().lower())
        if canon in mapping.values():
            first = next(k for k, v in mapping.items() if v == canon)
            raise TLIError(f"{source}: columns {first!r} and {name!r} both name the {canon} words; keep one")
        if canon:
            mapping[name] = canon
    missing = {"swahili", "english"} - set(mapping.values())
    if missing:
        raise TLIError(f"{source}: missing column(s) {', '.join(sorted(missing))}; found "
                       f"{', '.join(map(str, found)) or 'none'}. Name them swahili,english (or source,target)")
    return mapping


def read_pairs(data: bytes | str | Path, source: str | None = None, fmt: str | None = None,
               drop_empty: bool = False) -> tuple[pd.DataFrame, PairReport]:
    """Load a pair file (path or raw bytes) into a clean frame plus a report.

    Empty words are an error unless ``drop_empty`` (the UI drops them and shows the report);
    exact duplicate pairs are always dropped and reported; a file with no pairs is an error.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        source = source or str(path)
        if not path.is_file():
            raise TLIError(f"pair file not found: {path}")
        data = path.read_bytes()
    source = source or "uploaded file"
    fmt = _detect_format(source, fmt)
    if len(data) > MAX_BYTES:
        raise TLIError(f"{source} is {len(data) / 2**20:.0f} MB; a pair file may be at most "
                       f"{MAX_BYTES // 2**20} MB")
    records = _records_from_text(_decode(data, source), fmt, source)
    if len(records) > max_pairs():
        _check_size(len(records), source)
    if not records:
        raise TLIError(f"{source} contains no pairs")
    mapping = _canonical_columns(records, source)
    report = PairReport(source=source, rows_read=len(records))
    rows, seen = [], set()
    for i, rec in enumerate(records, 1):
        row = {mapping.get(k, k): v for k, v in rec.items() if k is not None}
        raw = (row.get("swahili"), row.get("english"))
        if not all(isinstance(v, str) for v in raw):
            raw = tuple("" if v is None else str(v) for v in raw)
        for word, which in zip(raw, ("Swahili", "English"), strict=True):
            if any(unicodedata.category(ch) == "Cc" for ch in word.strip()):
                raise TLIError(f"{source}: row {i}: the {which} word {_shown(word)} contains a control character "
                               f"(a NUL byte, line break or tab inside the word); one word or phrase per cell")
        sw, en = normalise_word(raw[0]), normalise_word(raw[1])
        if not sw or not en:
            if not drop_empty:
                which = "Swahili" if not sw else "English"
                raise TLIError(f"{source}: row {i} has an empty {which} word; fill it in or remove the row")
            report.empty_rows.append(i)
            continue
        report.normalised += (sw, en) != raw
        if (sw, en) in seen:
            report.duplicate_rows.append(i)
            continue
        seen.add((sw, en))
        row.update(swahili=sw, english=en)
        rows.append(row)
    if not rows:
        raise TLIError(f"{source} contains no pairs with both words filled in")
    df = pd.DataFrame(rows)
    front = ["swahili", "english"]
    df = df[front + [c for c in df.columns if c not in front]].reset_index(drop=True)
    report.kept = len(df)
    report.ambiguous_swahili = sorted(df.loc[df.swahili.duplicated(keep=False), "swahili"].unique())
    report.ambiguous_english = sorted(df.loc[df.english.duplicated(keep=False), "english"].unique())
    return df, report


def pairs_hash(df: pd.DataFrame) -> str:
    """Content hash of a pair set (its Swahili and English columns, in order): its identity everywhere."""
    return hashlib.sha1(df[["swahili", "english"]].to_csv(index=False).encode("utf-8")).hexdigest()[:16]


def load_pairs(path: str | Path, **kw) -> pd.DataFrame:
    """Load a pair file, raising :class:`TLIError` on anything a user must fix."""
    return read_pairs(path, **kw)[0]


def load_default_pairs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shipped trained and control sets (see assets/README.md for provenance)."""
    return load_pairs(DEFAULT_TRAINED), load_pairs(DEFAULT_CONTROL)


def check_leakage(trained: pd.DataFrame, control: pd.DataFrame) -> LeakageReport:
    """Pairs or Swahili words present in both sets (case-insensitive)."""
    def key(df, col):
        return df[col].str.casefold()

    t_pairs = set(zip(key(trained, "swahili"), key(trained, "english"), strict=True))
    same_pair = sorted({(s, e) for s, e in zip(key(control, "swahili"), key(control, "english"), strict=True)
                        if (s, e) in t_pairs})
    same_sw = sorted(set(key(trained, "swahili")) & set(key(control, "swahili")))
    same_en = sorted(set(key(trained, "english")) & set(key(control, "english")))
    return LeakageReport(same_pair=same_pair, same_swahili=same_sw, same_english=same_en)


def split_pairs(df: pd.DataFrame, n_control: int, seed: int = 0,
                stratify: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one pair set into trained and control sets with a fixed seed.

    With ``stratify`` (a column such as ``category``), each group contributes to the control
    set in proportion to its size, so the control set looks like the trained one.
    """
    if not 0 < n_control < len(df):
        raise TLIError(f"control set size must be between 1 and {len(df) - 1}, got {n_control}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        idx = rng.permutation(len(df))[:n_control]
    else:
        if stratify not in df.columns:
            raise TLIError(f"cannot stratify by {stratify!r}: no such column")
        groups = df.groupby(stratify, sort=True).indices
        quotas = {g: n_control * len(ix) / len(df) for g, ix in groups.items()}
        take = {g: int(q) for g, q in quotas.items()}
        # Largest remainders get the seats left after rounding down.
        for g in sorted(quotas, key=lambda g: quotas[g] - take[g], reverse=True)[: n_control - sum(take.values())]:
            take[g] += 1
        idx = np.concatenate([rng.permutation(ix)[: take[g]] for g, ix in groups.items()])
    mask = np.zeros(len(df), bool)
    mask[idx] = True
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def pairs_to_bytes(df: pd.DataFrame, fmt: str = "csv") -> bytes:
    """Serialise a pair set for download, in any of the formats it can be loaded from."""
    if fmt in ("csv", "tsv"):
        return csv_bytes(df, sep="," if fmt == "csv" else "\t")
    records = df.to_dict(orient="records")
    if fmt == "json":
        return json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8")
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    raise TLIError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
