"""Named corpora and text files: the WikiText convention, and clear errors."""

from __future__ import annotations

import pytest

from ngc.data.corpora import join_line_records, load_corpus, load_text_file
from ngc.errors import DataFormatError, DataNotFoundError, UsageError


def test_wikitext_records_are_lines_joined_by_blank_lines():
    raw = " \n = Title = \n \n Body text . \n"
    # one record per line, blank lines as empty records, joined with "\n\n" (the published convention)
    assert join_line_records(raw) == "\n\n = Title = \n\n\n\n\n Body text . \n"


def test_load_corpus_reads_the_named_split(data_dir):
    text = load_corpus("wikitext2", "test", data_dir)
    assert text.split == "test" and text.path.name == "wiki.test.raw"
    assert "test heading" in text.text and "valid" not in text.text


def test_data_dir_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv("NGC_DATA_DIR", str(data_dir))
    assert load_corpus("wikitext2", "validation").path.parent.parent == data_dir


def test_missing_data_dir_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("NGC_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError) as info:
        load_corpus("wikitext2", "test")
    assert "NGC_DATA_DIR" in info.value.hint


def test_missing_split_names_where_it_looked(data_dir):
    with pytest.raises(DataNotFoundError) as info:
        load_corpus("wikitext2", "train", data_dir)
    assert str(data_dir / "wikitext2_raw" / "wiki.train.raw") in info.value.message


def test_unknown_corpus_and_split(data_dir):
    with pytest.raises(UsageError, match="unknown corpus"):
        load_corpus("c4", "test", data_dir)
    with pytest.raises(UsageError, match="unknown split"):
        load_corpus("wikitext2", "dev", data_dir)


def test_text_file_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_text_file(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="empty"):
        load_text_file(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_text_file(latin)


def test_gsm8k_reads_question_and_answer_of_every_record(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text(
        '{"question": "Tom has 3 apples. ", "answer": "3 + 2 = 5\\n#### 5"}\n\n{"question": "Q2", "answer": "A2"}\n'
    )
    text = load_corpus("gsm8k", "test", tmp_path)
    assert text.text == "Tom has 3 apples.\n3 + 2 = 5\n#### 5\n\nQ2\nA2"


def test_gsm8k_record_without_an_answer_names_its_line(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": "only"}\n')
    with pytest.raises(DataFormatError) as info:
        load_corpus("gsm8k", "test", tmp_path)
    assert "line 2" in info.value.message and "answer" in info.value.message
