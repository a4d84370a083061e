"""`unimask export` of fine-tuned models: transformers' own classes and pipelines give what
`unimask predict` gives (classification probabilities, regression targets on pairs, SQuAD answers),
a model card, and one-line refusals for what transformers has no class for."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import shared_data, tiny_run_config
from unimask.cli import main
from unimask.errors import UserError
from unimask.export.finetuned import export_finetuned

pytest.importorskip("transformers")


def _predict(capsys, *argv: str) -> str:
    assert main(["predict", "--device", "cpu", "--precision", "fp32", "--quiet", *argv]) == 0
    return capsys.readouterr().out


def _rows(tsv: str) -> tuple[list[str], list[list[str]]]:
    lines = tsv.splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def test_classifier_pipeline_gives_predicts_labels_and_probabilities(classifier, tmp_path: Path, capsys) -> None:
    from transformers import pipeline

    ft, dev = classifier
    done = export_finetuned(ft, tmp_path / "hf")
    assert done.architecture == "BertForSequenceClassification"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "no", "1": "yes"} and config["problem_type"] == "single_label_classification"
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "classes: no, yes" in card and 'pipeline("text-classification"' in card and "| dev |" in card
    header, rows = _rows(_predict(capsys, "--model", str(ft), "--input", str(dev)))
    texts = [r[header.index("text")] for r in rows]
    ours = torch.tensor([[float(r[header.index("prob_no")]), float(r[header.index("prob_yes")])] for r in rows])
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    results = classify(texts, top_k=None, batch_size=8)                     # padded batches of 8
    theirs = torch.tensor([[{d["label"]: d["score"] for d in r}[label] for label in ("no", "yes")] for r in results])
    print(f"classification: pipeline vs predict, max abs diff of probabilities {(ours - theirs).abs().max():.2e}")
    assert (ours - theirs).abs().max() <= 1e-4
    assert [r[header.index("prediction")] for r in rows] == [max(r, key=lambda d: d["score"])["label"] for r in results]


@pytest.mark.slow
def test_pair_regression_pipeline_gives_predicts_targets(kjv_data, tmp_path: Path, capsys) -> None:
    from transformers import pipeline

    from unimask.tasks.finetune import FinetuneConfig, load_pretrained, sweep
    from unimask.tasks.glue import user_task
    from unimask.train.loop import train

    train(tiny_run_config(kjv_data, steps=2, save_every=2), tmp_path / "mlm", progress=False)
    words = "the lord said unto moses and they went up into the land".split()
    rows = [(" ".join(words[i % 7:i % 7 + 4]), " ".join(words[i % 5:i % 5 + 1 + i % 6]), i % 5) for i in range(64)]
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    task = user_task("regress", str(data), str(data), "a", "score", pair_column="b")
    cfg = FinetuneConfig(lrs=(1e-3,), seeds=(1,), epochs=1, batch_size=16, precision="fp32", max_length=24)
    sweep(task, load_pretrained(tmp_path / "mlm"), cfg, tmp_path / "ft", progress=False)
    export_finetuned(tmp_path / "ft", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["problem_type"] == "regression"
    header, out = _rows(_predict(capsys, "--model", str(tmp_path / "ft"), "--input", str(data)))
    ours = torch.tensor([float(r[header.index("prediction")]) for r in out])
    regress = pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    results = regress([{"text": a, "text_pair": b} for a, b, _ in rows], batch_size=8)
    theirs = torch.tensor([r["score"] for r in results])
    print(f"pair regression: pipeline vs predict, max abs diff of targets {(ours - theirs).abs().max():.2e}")
    assert (ours - theirs).abs().max() <= 1e-4


def test_squad_export_finds_predicts_answers_on_50_questions(kjv_data, tmp_path: Path, capsys) -> None:
    """transformers 5 removed pipeline("question-answering"), so the exported BertForQuestionAnswering is
    run by hand: AutoTokenizer (question, context), start/end logits, and BERT's n-best rule (run_squad.py,
    as unimask decodes): among the 20 best starts and 20 best ends, the best-scoring span of context
    tokens up to 30 tokens long, cut from the context by offsets. A tiny model with 1,024 positions
    puts every context in one window."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from unimask.train.loop import train

    cfg = tiny_run_config(kjv_data, steps=2, save_every=2)
    cfg.model = replace(cfg.model, max_positions=1024)
    train(cfg, tmp_path / "mlm", progress=False)
    data = json.loads(shared_data("squad", "xquad.en.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps({"version": "1.1", "data": data["data"][10:20]}))
    (tmp_path / "dev.json").write_text(json.dumps({"version": "1.1", "data": data["data"][:3]}))
    assert main(["finetune", "--checkpoint", str(tmp_path / "mlm"), "--task", "squad", "--train",
                 str(tmp_path / "train.json"), "--dev", str(tmp_path / "dev.json"), "--max-length", "1024",
                 "--max-train-examples", "32", "--epochs", "1", "--batch-size", "8", "--lr", "3e-3",
                 "--precision", "fp32", "--quiet", "--out", str(tmp_path / "ft")]) == 0
    questions = [(qa["id"], qa["question"], p["context"]) for a in data["data"][:3] for p in a["paragraphs"]
                 for qa in p["qas"]][:50]
    assert len(questions) == 50
    _predict(capsys, "--model", str(tmp_path / "ft"), "--input", str(tmp_path / "dev.json"),
             "--output", str(tmp_path / "predictions.json"))
    ours = json.loads((tmp_path / "predictions.json").read_text())
    assert export_finetuned(tmp_path / "ft", tmp_path / "hf").architecture == "BertForQuestionAnswering"
    assert "AutoModelForQuestionAnswering" in (tmp_path / "hf" / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    theirs = []
    for _, question, context in questions:
        enc = tokenizer(question, context, truncation="only_second", max_length=1024, return_offsets_mapping=True,
                        return_tensors="pt")
        with torch.no_grad():
            out = model(**{k: v for k, v in enc.items() if k != "offset_mapping"})
        start, end = out.start_logits[0], out.end_logits[0]                               # (T,)
        context_token = torch.tensor([s == 1 for s in enc.sequence_ids(0)])              # (T,)
        scores = start[:, None] + end[None, :]                                            # (T, T)
        span = torch.arange(len(start))
        allowed = (span[None, :] >= span[:, None]) & (span[None, :] - span[:, None] < 30)
        best = torch.zeros(len(start), dtype=torch.bool)
        n_best = (best.clone().index_fill_(0, start.topk(20).indices, True),
                  best.clone().index_fill_(0, end.topk(20).indices, True))                # (T,) each
        allowed &= (n_best[0] & context_token)[:, None] & (n_best[1] & context_token)[None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        a, b = divmod(int(scores.argmax()), len(start))
        offsets = enc["offset_mapping"][0]
        theirs.append(context[int(offsets[a][0]):int(offsets[b][1])])
    assert [ours[i] for i, _, _ in questions] == theirs


def test_mean_pooling_exports_with_remote_code_and_the_pipeline_agrees(classifier, tmp_path: Path, capsys) -> None:
    from transformers import pipeline

    ft, dev = classifier
    meta_path = ft / "best" / "finetune.json"
    meta = json.loads(meta_path.read_text())
    try:      # the same weights read through mean pooling, in predict and in the export
        meta_path.write_text(json.dumps({**meta, "task_options": {**meta["task_options"], "pooling": "mean"}}))
        assert main(["export", str(ft), "--out", str(tmp_path / "mean")]) == 0
        assert "UnimaskForSequenceClassification" in capsys.readouterr().out
        header, rows = _rows(_predict(capsys, "--model", str(ft), "--input", str(dev)))
    finally:
        meta_path.write_text(json.dumps(meta))
    config = json.loads((tmp_path / "mean" / "config.json").read_text())
    assert config["classifier_pooling"] == "mean" and "trust_remote_code=True" in (tmp_path / "mean" / "README.md").read_text()
    ours = torch.tensor([[float(r[header.index("prob_no")]), float(r[header.index("prob_yes")])] for r in rows])
    classify = pipeline("text-classification", model=str(tmp_path / "mean"), device="cpu", trust_remote_code=True)
    results = classify([r[header.index("text")] for r in rows], top_k=None, batch_size=8)
    theirs = torch.tensor([[{d["label"]: d["score"] for d in r}[label] for label in ("no", "yes")] for r in results])
    print(f"mean pooling (remote code): pipeline vs predict, max abs diff {(ours - theirs).abs().max():.2e}")
    assert (ours - theirs).abs().max() <= 1e-4


def test_an_existing_output_is_kept_without_overwrite(classifier, tmp_path: Path, capsys) -> None:
    ft, _ = classifier
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        export_finetuned(ft, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert main(["export", str(ft), "--out", str(tmp_path / "out"), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert 'transformers.pipeline("text-classification"' in out and not (tmp_path / "out" / "keep.txt").exists()
