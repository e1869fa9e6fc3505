"""Word-pair loading: every format, normalisation, and every bad file a user might bring."""

import json
import unicodedata

import pandas as pd
import pytest

from tli_core.errors import TLIError
from tli_core.pairs import check_leakage, load_default_pairs, pairs_to_bytes, read_pairs, split_pairs

ROWS = [{"swahili": "maji", "english": "water"}, {"swahili": "habari za asubuhi", "english": "good morning"}]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_every_format_round_trips(tmp_path, fmt):
    df = pd.DataFrame(ROWS)
    path = tmp_path / f"p.{fmt}"
    path.write_bytes(pairs_to_bytes(df, fmt))
    got, report = read_pairs(path)
    assert got[["swahili", "english"]].to_dict("records") == ROWS
    assert report.kept == 2 and report.rows_read == 2


def test_json_with_pairs_key_and_source_target_headers(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"pairs": [{"source": "mbwa", "target": "dog"}]}))
    df, _ = read_pairs(tmp_path / "a.json")
    assert df.loc[0, "swahili"] == "mbwa" and df.loc[0, "english"] == "dog"
    (tmp_path / "b.csv").write_text("Source,Target,category\npaka,cat,noun\n")
    df, _ = read_pairs(tmp_path / "b.csv")
    assert list(df.columns) == ["swahili", "english", "category"] and df.loc[0, "category"] == "noun"


def test_nfc_trim_and_multiword(tmp_path):
    decomposed = unicodedata.normalize("NFD", "café")
    (tmp_path / "p.csv").write_text(f"swahili,english\n  kahawa   ya  {decomposed} ,  coffee \n", encoding="utf-8")
    df, report = read_pairs(tmp_path / "p.csv")
    assert df.loc[0, "swahili"] == unicodedata.normalize("NFC", "kahawa ya café")
    assert df.loc[0, "english"] == "coffee"
    assert report.normalised == 1


def test_words_that_look_like_missing_values_are_kept(tmp_path):
    # "na" (and) or "null" are words, not missing data
    (tmp_path / "p.csv").write_text("swahili,english\nna,and\nnull,NA\n")
    df, _ = read_pairs(tmp_path / "p.csv")
    assert list(df["swahili"]) == ["na", "null"] and list(df["english"]) == ["and", "NA"]


def test_duplicates_are_dropped_and_reported(tmp_path):
    (tmp_path / "p.csv").write_text("swahili,english\nmaji,water\nmaji,water\nmaji,liquid\nkioevu,liquid\n")
    df, report = read_pairs(tmp_path / "p.csv")
    assert len(df) == 3 and report.duplicate_rows == [2]
    assert report.ambiguous_swahili == ["maji"] and report.ambiguous_english == ["liquid"]
    assert any("duplicate" in line for line in report.lines())


def test_empty_words_error_or_drop(tmp_path):
    (tmp_path / "p.csv").write_text("swahili,english\nmaji,water\n ,dog\npaka,\n")
    with pytest.raises(TLIError, match="row 2 has an empty Swahili word"):
        read_pairs(tmp_path / "p.csv")
    df, report = read_pairs(tmp_path / "p.csv", drop_empty=True)
    assert len(df) == 1 and report.empty_rows == [2, 3]


@pytest.mark.parametrize("content, message", [
    (b"swahili,english\nmaji,water\n\xff\xfe,x\n", "not UTF-8"),
    (b"sw,en\nmaji,water\n", "missing column"),
    (b"swahili\nmaji\n", "missing column\\(s\\) english"),
    (b"swahili,english\n", "no pairs"),
    (b"", "empty"),
    (b"swahili,english\n ,\n", "empty"),
])
def test_bad_csv_files(tmp_path, content, message):
    (tmp_path / "p.csv").write_bytes(content)
    with pytest.raises(TLIError, match=message):
        read_pairs(tmp_path / "p.csv")


@pytest.mark.parametrize("name, content, message", [
    ("p.json", "{not json", "not valid JSON"),
    ("p.json", '{"words": []}', "list of objects"),
    ("p.json", "[]", "no pairs"),
    ("p.jsonl", '{"swahili": "a", "english": "b"}\n[1, 2]\n', "line 2"),
    ("p.xlsx", "whatever", "unknown pair-file format"),
])
def test_bad_json_and_formats(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TLIError, match=message):
        read_pairs(tmp_path / name)


def test_missing_file():
    with pytest.raises(TLIError, match="not found"):
        read_pairs("/nonexistent/pairs.csv")


def test_uploaded_bytes_need_a_name_or_format():
    df, _ = read_pairs(b"swahili\tenglish\nmaji\twater\n", source="upload.tsv")
    assert len(df) == 1
    df, _ = read_pairs(b'[{"swahili": "a", "english": "b"}]', source="upload", fmt="json")
    assert len(df) == 1


def test_leakage_report():
    trained = pd.DataFrame({"swahili": ["maji", "paka", "mbwa"], "english": ["water", "cat", "dog"]})
    control = pd.DataFrame({"swahili": ["Maji", "paka", "nyumba"], "english": ["water", "kitty", "dog"]})
    leak = check_leakage(trained, control)
    assert leak.same_pair == [("maji", "water")]
    assert leak.same_swahili == ["maji", "paka"]
    assert leak.same_english == ["dog", "water"]
    assert leak.leaks
    clean = check_leakage(trained, pd.DataFrame({"swahili": ["nyumba"], "english": ["house"]}))
    assert not clean.leaks and clean.lines() == ["no overlap between trained and control sets"]


def test_stratified_split_is_seeded_and_proportional():
    df = pd.DataFrame({"swahili": [f"s{i}" for i in range(100)], "english": [f"e{i}" for i in range(100)],
                       "category": ["noun"] * 60 + ["verb"] * 30 + ["number"] * 10})
    trained, control = split_pairs(df, 10, seed=3, stratify="category")
    assert len(control) == 10 and len(trained) == 90
    assert control["category"].value_counts().to_dict() == {"noun": 6, "verb": 3, "number": 1}
    assert not check_leakage(trained, control).leaks
    again, _ = split_pairs(df, 10, seed=3, stratify="category")
    assert again.equals(trained)
    with pytest.raises(TLIError):
        split_pairs(df, 0)


def test_default_sets_are_large_clean_and_disjoint():
    trained, control = load_default_pairs()
    assert len(trained) >= 600 and len(control) >= 60
    for df in (trained, control):
        assert not df["swahili"].duplicated().any() and not df["english"].duplicated().any()
        assert (df["swahili"].str.len() > 0).all() and (df["english"].str.len() > 0).all()
    leak = check_leakage(trained, control)
    assert not leak.leaks and not leak.same_english
    assert {"noun", "verb", "adjective", "number", "phrase"} <= set(trained["category"])
    assert trained["swahili"].str.contains(" ").any()  # multi-word expressions are included
