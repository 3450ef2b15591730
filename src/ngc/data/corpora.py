"""Named corpora, resolved in the data directory, and plain UTF-8 text files.

The data directory is ``--data-dir``, else ``$NGC_DATA_DIR`` (``ngc.settings.data_dir``). A named corpus maps
each split to a file inside it. WikiText-2 raw is read the way the published perplexity figures read it: one
record per line of the official file (blank lines as empty records), records joined with "\\n\\n" (SPEC §7).
GSM8K (grade-school maths problems and worked solutions: a text unlike Wikipedia) is read as each record's
question and answer, records joined with a blank line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ngc.errors import DataFormatError, DataNotFoundError, UsageError
from ngc.settings import DATA_DIR_ENV, data_dir

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def join_line_records(raw: str) -> str:
    """WikiText convention: every line is a record, blank ones empty; records joined with a blank line."""
    records = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(records)


def join_question_answers(raw: str) -> str:
    """JSON lines with ``question`` and ``answer`` -> ``question\\nanswer`` per record, joined with a blank line."""
    records = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            records.append(f"{item['question'].strip()}\n{item['answer'].strip()}")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise DataFormatError(
                f"line {number} is not a JSON object with text fields question and answer ({error})",
                hint="use the GSM8K JSONL files (fields question, answer)",
            ) from None
    return "\n\n".join(records)


@dataclass(frozen=True)
class Corpus:
    name: str
    folder: str  # inside the data directory
    files: dict[str, str]  # split -> file name inside ``folder``
    prepare: Callable[[str], str]  # raw file text -> evaluated text


CORPORA: dict[str, Corpus] = {
    "wikitext2": Corpus(
        "wikitext2",
        "wikitext2_raw",
        {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"},
        join_line_records,
    ),
    "gsm8k": Corpus("gsm8k", "gsm8k", {"train": "train.jsonl", "test": "test.jsonl"}, join_question_answers),
}


@dataclass(frozen=True)
class Text:
    """A text ready to tokenise, with where it came from."""

    name: str  # corpus name, or the file path as given
    split: str | None  # None for a plain file
    path: Path
    text: str


def read_utf8(path: Path) -> str:
    """The whole file as text; clear errors for a missing, empty or non-UTF-8 file."""
    if not path.is_file():
        raise DataNotFoundError(f"text file {path} does not exist", hint="check the path")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})",
            hint="convert it first, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`",
        ) from None
    if not text.strip():
        raise DataFormatError(f"{path} is empty", hint="give a file with text in it")
    return text


def _corpus_path(corpus: Corpus, split: str, root: Path | None) -> Path:
    if root is None:
        raise DataNotFoundError(
            f"corpus {corpus.name!r} needs a data directory, and none is set",
            hint=f"set {DATA_DIR_ENV}=/path/to/data or pass --data-dir (it must hold {corpus.folder}/)",
        )
    path = root / corpus.folder / corpus.files[split]
    if not path.is_file():
        raise DataNotFoundError(
            f"corpus {corpus.name!r} split {split!r} not found: looked for {path}",
            hint=f"point {DATA_DIR_ENV} or --data-dir at a folder that holds {corpus.folder}/{corpus.files[split]}",
        )
    return path


def available_splits(name: str, explicit_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The splits of a named corpus whose files exist in the data directory."""
    corpus = CORPORA[name]
    root = data_dir(explicit_dir)
    if root is None:
        return []
    return [split for split, file in corpus.files.items() if (root / corpus.folder / file).is_file()]


def load_corpus(name: str, split: str = "test", explicit_dir: str | os.PathLike[str] | None = None) -> Text:
    """A named corpus split, read from the data directory."""
    if name not in CORPORA:
        raise UsageError(f"unknown corpus {name!r}", hint=f"named corpora: {', '.join(CORPORA)}; or give a file")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", hint=f"splits: {', '.join(SPLITS)}")
    corpus = CORPORA[name]
    path = _corpus_path(corpus, split, data_dir(explicit_dir))
    return Text(name, split, path, corpus.prepare(read_utf8(path)))


def load_text_file(path: str | os.PathLike[str]) -> Text:
    """Any UTF-8 text file, evaluated as it is."""
    path = Path(path).expanduser()
    return Text(str(path), None, path, read_utf8(path))
