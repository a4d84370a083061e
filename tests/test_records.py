"""Readers of user files keep what the file says (issue 15): record boundaries, newlines inside
quoted fields, missing and null values, BOMs and CRLF, malformed rows, SQuAD offsets and ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimask.errors import UserError
from unimask.tasks.glue import TableSpec, glue_task, read_examples, user_task
from unimask.tasks.records import split_records
from unimask.tasks.seq2seq import read_jsonl, read_pairs
from unimask.tasks.squad import read_squad

# every character that str.splitlines() breaks on besides "\n" and "\r\n"
BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


def test_a_quoted_csv_field_keeps_its_newline(tmp_path: Path) -> None:
    for newline in ("\n", "\r\n"):
        path = tmp_path / "reviews.csv"
        path.write_bytes(f'review,stars{newline}"first line{newline}second line",pos{newline}'
                         f'"a ""quoted"", one",neg{newline}'.encode())
        examples = read_examples(path, TableSpec("review", "stars"), regression=False)
        assert [(e.text, e.label) for e in examples] == [(f"first line{newline}second line", "pos"),
                                                          ('a "quoted", one', "neg")]


def test_an_unterminated_csv_quote_is_an_error_not_a_swallowed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('review,stars\nok,pos\n"never closed,neg\nthird,pos\n')
    with pytest.raises(UserError, match=r"bad.csv line 3 is not valid CSV"):
        read_examples(path, TableSpec("review", "stars"), regression=False)


def test_line_files_split_records_on_newlines_only(tmp_path: Path) -> None:
    """8-line source / target files with a form feed in one source and U+2028 in a later target are
    8 pairs, line i with line i (the issue's case), and so for every other splitlines() break."""
    sources = [f"source {i}" for i in range(8)]
    targets = [f"target {i}" for i in range(8)]
    sources[2] = "source 2 \x0c with a form feed"
    targets[5] = "target 5 \u2028 with a line separator"
    (tmp_path / "src.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("\n".join(targets) + "\n", encoding="utf-8")
    pairs = read_pairs(tmp_path / "src.txt", tmp_path / "tgt.txt")
    assert [(p.source, p.target) for p in pairs] == list(zip(sources, targets))
    text = "".join(f"a{c}b\n" for c in BREAKS) + "last without newline"
    assert split_records(text) == [f"a{c}b" for c in BREAKS] + ["last without newline"]
    assert split_records("x\r\ny\r\n") == ["x", "y"]


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_table_records_keep_every_break_character(tmp_path: Path, suffix: str) -> None:
    texts = [f"one{c}two" for c in BREAKS if not (c == "\r" and suffix == ".csv")]   # csv: a lone CR ends a record
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": "a"}, ensure_ascii=False) + "\n" for t in texts),
                        encoding="utf-8")
    elif suffix == ".csv":
        path.write_text("text,label\n" + "".join(f"{t},a\n" for t in texts), encoding="utf-8", newline="")
    else:
        path.write_text("text\tlabel\n" + "".join(f"{t}\ta\n" for t in texts), encoding="utf-8", newline="")
    examples = read_examples(path, TableSpec("text", "label"), regression=False)
    assert [e.text for e in examples] == texts


def test_jsonl_with_missing_and_null_values_is_refused_or_skipped_and_counted(tmp_path: Path, capsys) -> None:
    path = tmp_path / "train.jsonl"
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": None}, {"text": "fine", "label": "pos"},
            {"text": "no label"}, {"label": "neg"}, {"text": "awful", "label": "neg"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError) as error:
        user_task("classify", str(path), str(path), "text", "label")
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "line 2: 'label' is null" in message and "and 2 more" in message and "--skip-bad-rows" in message
    task = user_task("classify", str(path), str(path), "text", "label", skip_bad_rows=True)
    assert task.labels == ("neg", "pos")                                   # no class "None"
    assert [(e.text, e.label) for e in task.examples("train")] == [("good", "pos"), ("fine", "pos"), ("awful", "neg")]
    warning = capsys.readouterr().err
    assert "skipped 3 of 6 rows" in warning and "line 2, line 4, line 5" in warning
    path.write_text(json.dumps({"text": "x", "label": None}) + "\n")
    with pytest.raises(UserError, match="none of its 1 rows is usable"):                 # skipping everything
        read_examples(path, TableSpec("text", "label"), regression=False, skip_bad_rows=True)
    for bad, problem in (({"text": "x"}, "no 'label' field"), ({"label": "pos"}, "no 'text' field"),
                         ({"text": None, "label": "pos"}, "'text' is null"),
                         ({"text": "x", "label": ["pos"]}, "'label' is")):
        path.write_text(json.dumps({"text": "ok", "label": "neg"}) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(UserError, match=f"line 2: {problem}"):
            read_examples(path, TableSpec("text", "label"), regression=False)


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_empty_label_cells_and_bad_targets_are_named(tmp_path: Path, suffix: str) -> None:
    sep = "\t" if suffix == ".tsv" else ","
    path = tmp_path / f"d{suffix}"
    path.write_text(sep.join(["text", "label", "score"]) + "\n" + sep.join(["good", "pos", "4"]) + "\n"
                    + sep.join(["odd", "", "2"]) + "\n" + sep.join(["bad", "neg", "nan"]) + "\n"
                    + sep.join(["meh", "neg", " 3.5 "]) + "\n")
    with pytest.raises(UserError, match="line 3: 'label' is empty"):
        read_examples(path, TableSpec("text", "label"), regression=False)
    with pytest.raises(UserError, match="line 4: 'score' is \"nan\", not a finite number"):
        read_examples(path, TableSpec("text", "score"), regression=True)
    kept = read_examples(path, TableSpec("text", "score"), regression=True, skip_bad_rows=True)
    assert [e.label for e in kept] == [4.0, 2.0, 3.5]                      # a number written as text is read


def test_jsonl_numbers_and_numbers_written_as_text(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"t": "a", "y": 1, "s": "2.5"}\n{"t": 7, "y": true, "s": 3}\n')
    assert [(e.text, e.label) for e in read_examples(path, TableSpec("t", "y"), regression=False)] == \
        [("a", "1"), ("7", "true")]
    assert [e.label for e in read_examples(path, TableSpec("t", "s"), regression=True)] == [2.5, 3.0]
    path.write_text('{"t": "a", "s": true}\n')
    with pytest.raises(UserError, match="not a finite number"):
        read_examples(path, TableSpec("t", "s"), regression=True)


def test_bom_crlf_extra_columns_and_duplicate_headers(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes("\ufeffsentence\tlabel\r\ncalm\tpos\r\nstorm\tneg\r\n".encode())
    examples = read_examples(path, TableSpec("sentence", "label"), regression=False)
    assert [(e.text, e.label) for e in examples] == [("calm", "pos"), ("storm", "neg")]
    path.write_text("sentence\tlabel\ncalm\tpos\nstorm\twith a tab\tneg\n")
    with pytest.raises(UserError, match="line 3: 3 fields where the header has 2"):
        read_examples(path, TableSpec("sentence", "label"), regression=False)
    path.write_text("text,text,label\na,b,pos\n")
    with pytest.raises(UserError, match="2 columns named 'text'"):
        read_examples(path.rename(tmp_path / "d.csv"), TableSpec("text", "label"), regression=False)
    cola = tmp_path / "cola"
    cola.mkdir()
    (cola / "train.tsv").write_text("src\t1\t\tGood.\nsrc\t0\t*\n")        # header-less: the width of row 1
    (cola / "dev.tsv").write_text("src\t1\t\tGood.\n")
    with pytest.raises(UserError, match="line 2: 3 fields where the first row has 4"):
        glue_task("cola", cola).examples("train")


def test_a_label_only_in_dev_is_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("text\tlabel\na\tpos\nb\tneg\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\nc\tneutral\n")
    task = user_task("classify", str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"), "text", "label")
    with pytest.raises(UserError, match=r"\['neutral'\] .*train.tsv; pass --labels"):
        task.examples("dev")
    task = user_task("classify", str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"), "text", "label",
                     labels=["neg", " neutral", "pos"])
    assert task.labels == ("neg", "neutral", "pos") and [e.label for e in task.examples("dev")] == ["neutral"]
    with pytest.raises(UserError, match="names a class twice"):
        user_task("classify", None, str(tmp_path / "dev.tsv"), "text", "label", labels=["a", "a"])


def test_seq2seq_jsonl_nulls_and_blank_pairs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"src": "a", "tgt": "x"}\n{"src": "b", "tgt": null}\n{"src": "c"}\n{"src": "d", "tgt": "y"}\n')
    with pytest.raises(UserError, match=r"line 2: 'tgt' is null .*and 1 more"):
        read_jsonl(path)
    assert [(e.source, e.target) for e in read_jsonl(path, skip_bad_rows=True)] == [("a", "x"), ("d", "y")]
    assert "skipped 2 of 4 rows" in capsys.readouterr().err
    assert [e.target for e in read_jsonl(path, target_required=False)] == ["x", "", "", "y"]   # inputs stay aligned
    (tmp_path / "s.txt").write_text("a\n\nc\n")
    (tmp_path / "t.txt").write_text("x\ny\nz\n")
    with pytest.raises(UserError, match="line 2: the source is blank"):
        read_pairs(tmp_path / "s.txt", tmp_path / "t.txt")


def _squad(tmp_path: Path, qas: list[dict], context: str = "The cat sat on the mat.") -> Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    return path


def test_squad_offsets_ids_and_answers_are_checked(tmp_path: Path, capsys) -> None:
    good = {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}
    assert read_squad(_squad(tmp_path, [good]))[0].answers == (("The cat", 0),)
    other = {**good, "id": "q2"}
    cases = [
        ({**other, "answers": [{"text": "mat", "answer_start": 3}]}, "answer 'mat' is not at answer_start 3"),
        ({**other, "answers": [{"text": "mat", "answer_start": 99}]}, "answer_start 99 is not a character offset"),
        ({**other, "answers": [{"text": "mat", "answer_start": "19"}]}, "answer_start '19' is not"),
        ({**other, "answers": []}, "it has no answers and is not marked is_impossible"),
        ({**other, "question": None}, "'question' is missing"),
        (good, "its id repeats"),
    ]
    for bad, problem in cases:
        path = _squad(tmp_path, [good, bad])
        with pytest.raises(UserError, match=f"question 2 \\(id '{bad['id']}'\\): {problem}"):
            read_squad(path)
    path = _squad(tmp_path, [good, {**good, "id": "q2", "answers": [{"text": "mat", "answer_start": 19}]},
                             {**good, "id": "q3", "answers": [{"text": "mat", "answer_start": 2}]}])
    assert [e.id for e in read_squad(path, skip_bad_rows=True)] == ["q1", "q2"]
    assert "skipped 1 of 3 questions" in capsys.readouterr().err
    impossible = {"id": "q4", "question": "Who flew?", "answers": [], "is_impossible": True}
    assert read_squad(_squad(tmp_path, [good, impossible]))[1].is_impossible
