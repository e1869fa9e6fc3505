"""Datasets of the local tasks, read from the JSONL files of the run being benchmarked ($TLI_TASK_ITEMS, written
from its own control set by tli_core.downstream.write_local_items), else from the files beside this one (the
shipped pairs); whatever the working directory, nothing is written to the Hugging Face datasets cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _load(direction: str) -> datasets.DatasetDict:
    splits = {}
    for split in ("train", "test"):
        folder = Path(os.environ.get("TLI_TASK_ITEMS") or HERE)
        lines = (folder / f"{direction}_{split}.jsonl").read_text(encoding="utf-8").splitlines()
        splits[split] = datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])
    return datasets.DatasetDict(splits)


def sw_en(**kwargs) -> datasets.DatasetDict:
    return _load("sw_en")


def en_sw(**kwargs) -> datasets.DatasetDict:
    return _load("en_sw")
