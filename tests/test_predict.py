"""`unimask predict`: a fine-tuned classifier on new files (rows kept, probabilities, the same
predictions as evaluation, independent of batching), GLUE test layouts and submission files, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch

from conftest import shared_data
from unimask.cli import main
from unimask.errors import UserError
from unimask.tasks.glue import GLUE, SentenceTask
from unimask.tasks.predict import _read_unlabelled, _submission_name, load_finetuned


def _predict(capsys, *argv: str) -> str:
    assert main(["predict", "--device", "cpu", "--precision", "fp32", "--quiet", *argv]) == 0
    return capsys.readouterr().out


def test_predictions_match_evaluation_and_keep_every_field(classifier, capsys) -> None:
    ft, dev = classifier
    out = _predict(capsys, "--model", str(ft), "--input", str(dev))
    lines = out.splitlines()
    assert lines[0] == "id\ttext\tlabel\tprediction\tprob_no\tprob_yes"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[:3] for r in rows] == [line.split("\t") for line in dev.read_text().splitlines()[1:]]
    probs = torch.tensor([[float(r[4]), float(r[5])] for r in rows])
    assert torch.allclose(probs.sum(1), torch.ones(len(rows)), atol=2e-6)
    assert [r[3] for r in rows] == [("no", "yes")[i] for i in probs.argmax(1).tolist()]
    accuracy = 100 * sum(r[2] == r[3] for r in rows) / len(rows)
    saved = json.loads((ft / "results.json").read_text())
    assert accuracy == pytest.approx(saved["summary"]["dev"]["accuracy"]["best"])   # what evaluation scored


def test_batching_and_padding_do_not_change_probabilities(classifier, capsys) -> None:
    ft, dev = classifier
    one = _predict(capsys, "--model", str(ft), "--input", str(dev), "--batch-size", "1")
    many = _predict(capsys, "--model", str(ft), "--input", str(dev), "--batch-size", "64")
    p1 = torch.tensor([[float(x) for x in line.split("\t")[4:]] for line in one.splitlines()[1:]])
    p64 = torch.tensor([[float(x) for x in line.split("\t")[4:]] for line in many.splitlines()[1:]])
    assert (p1 - p64).abs().max() <= 1e-5


def test_csv_and_jsonl_inputs_come_back_in_their_own_format(classifier, tmp_path: Path, capsys) -> None:
    ft, _ = classifier
    texts = ["moses went up\ninto the land", "the people said", 'and "they" went, all']
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["note", "text"], *[[f"n{i}", t] for i, t in enumerate(texts)]])
    rows = list(csv.reader(io.StringIO(_predict(capsys, "--model", str(ft), "--input", str(path)))))
    assert rows[0] == ["note", "text", "prediction", "prob_no", "prob_yes"]
    assert [r[1] for r in rows[1:]] == texts                                  # quoted newline and quotes kept
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "meta": {"k": i}}) + "\n" for i, t in enumerate(texts)))
    records = [json.loads(line) for line in _predict(capsys, "--model", str(ft), "--input", str(jsonl)).splitlines()]
    assert [r["text"] for r in records] == texts and [r["meta"]["k"] for r in records] == [0, 1, 2]
    assert all(r["prediction"] in ("no", "yes") and abs(r["prob_no"] + r["prob_yes"] - 1) < 2e-6 for r in records)
    out = tmp_path / "pred.jsonl"
    _predict(capsys, "--model", str(ft), "--input", str(jsonl), "--output", str(out))
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def test_loaded_model_is_the_fine_tuned_one(classifier) -> None:
    ft, _ = classifier
    model = load_finetuned(ft)
    assert model.task.labels == ("no", "yes") and model.max_length == 24
    assert model.task.table.text == "text" and not model.encoder.training


def test_bad_inputs_are_one_line_errors(classifier, kjv_data, tmp_path: Path, capsys) -> None:
    ft, dev = classifier
    cases = []
    (tmp_path / "other.tsv").write_text("id\tsentence\n1\thello\n")
    cases.append((["--model", str(ft), "--input", str(tmp_path / "other.tsv")], "no column 'text' (columns: id, sentence)"))
    (tmp_path / "null.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
    cases.append((["--model", str(ft), "--input", str(tmp_path / "null.jsonl")], "line 2: 'text' is null"))
    (tmp_path / "taken.tsv").write_text("text\tprediction\na\tb\n")
    cases.append((["--model", str(ft), "--input", str(tmp_path / "taken.tsv")], "already has a column 'prediction'"))
    cases.append((["--model", str(ft.parent / "mlm"), "--input", str(dev)], "is a pretraining run"))
    cases.append((["--model", str(tmp_path), "--input", str(dev)], "has no finetune.json"))
    cases.append((["--model", str(ft), "--input", str(dev), "--glue-submission", str(tmp_path / "sub")],
                  "needs a model fine-tuned on a GLUE task"))
    cases.append((["--model", str(ft), "--input", str(dev), "--output", str(tmp_path / "no" / "x.tsv")],
                  "does not exist"))
    for argv, message in cases:
        assert main(["predict", "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "sub").exists() and not (tmp_path / "no").exists()
    assert main(["generate", "--model", str(ft), "--input", str(dev)]) == 2
    assert "`unimask predict` runs the others" in capsys.readouterr().err


def test_glue_test_layouts_and_submission_names(tmp_path: Path) -> None:
    spec = GLUE["cola"]
    cola = SentenceTask("cola", {}, spec.table, spec.labels, spec.metric, spec.scorers)
    _, dev = _read_unlabelled(shared_data("glue", "CoLA", "dev.tsv"), cola, None, None)     # header-less
    table, test = _read_unlabelled(shared_data("glue", "CoLA", "test.tsv"), cola, None, None)   # "index sentence"
    assert len(dev) == 1043 and dev[0].text.startswith("The sailors rode the breeze clear of the rocks")
    assert len(test) == 1063 and table.header == ["index", "sentence"] and test[0].text == "Bill whistled past the house."
    spec = GLUE["rte"]
    rte = SentenceTask("rte", {}, spec.table, spec.labels, spec.metric, spec.scorers)
    _, pairs = _read_unlabelled(shared_data("glue", "RTE", "test.tsv"), rte, None, None)
    assert len(pairs) == 3000 and all(e.pair for e in pairs)
    assert _submission_name("mnli", Path("MNLI/test_matched.tsv")) == "MNLI-m"
    assert _submission_name("mnli", Path("test_mismatched.tsv")) == "MNLI-mm"
    assert _submission_name("mnli", Path("diagnostic.tsv")) == "AX"
    assert _submission_name("sst2", Path("anything.tsv")) == "SST-2"
    with pytest.raises(UserError, match="test_matched"):
        _submission_name("mnli", Path("mine.tsv"))
