"""Fine-tuning: GLUE / user-file loaders, features, layer-wise lr decay, the loop, HF directories, reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import keyword_rows, shared_data, tiny_run_config
from unimask.cli import main
from unimask.errors import UserError
from unimask.tasks.base import SpecialIds, collate
from unimask.tasks.finetune import FinetuneConfig, load_pretrained, parameter_groups, summary_lines, sweep
from unimask.tasks.glue import GLUE, GLUE_DIRS, ClassificationHead, Example, SentenceTask, TableSpec, glue_task, user_task
from unimask.tasks.metrics import squad_scores
from unimask.tasks.report import collect, table
from unimask.tasks.squad import read_squad

GLUE_SIZES = {  # (train, dev) rows in ../shared/data/glue (README.md there)
    "cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
    "rte": (2490, 277), "wnli": (635, 71),
}


@pytest.fixture(scope="module")
def checkpoint(kjv_data, tmp_path_factory) -> Path:
    """A 2-step tiny MLM run with one checkpoint."""
    from unimask.train.loop import train
    run = tmp_path_factory.mktemp("ft") / "mlm"
    train(tiny_run_config(kjv_data, steps=2, save_every=2), run, progress=False)
    return run


@pytest.mark.parametrize("name", sorted(GLUE_SIZES))
def test_glue_loaders_read_the_standard_layout(name: str) -> None:
    task = glue_task(name, shared_data("glue", GLUE_DIRS[name]))
    train, dev = task.examples("train"), task.examples("dev")
    assert (len(train), len(dev)) == GLUE_SIZES[name]
    spec = GLUE[name]
    for e in train[:50] + dev[:50]:
        assert e.text.strip()
        assert (e.pair is None) == (spec.table.pair is None)
        assert isinstance(e.label, float) if spec.labels is None else e.label in spec.labels
    if name == "stsb":
        assert all(0.0 <= e.label <= 5.0 for e in dev)
    if name == "cola":   # header-less: the first row is an example, not a header
        assert train[0].text.startswith("Our friends won't buy this analysis")


def test_qnli_loader_on_dev() -> None:
    """QNLI has no train split in ../shared: its loader is tested on dev alone."""
    spec = GLUE["qnli"]
    task = SentenceTask("qnli", {"dev": shared_data("glue", "QNLI", "dev.tsv")}, spec.table, spec.labels,
                        spec.metric, spec.scorers)
    dev = task.examples("dev")
    assert len(dev) == 5463
    assert {e.label for e in dev} == {"entailment", "not_entailment"}
    assert dev[0].text.endswith("?") and dev[0].pair


def test_glue_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        glue_task("rte", tmp_path / "nope")
    with pytest.raises(UserError, match="dev.tsv"):
        glue_task("rte", tmp_path)
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UserError, match="maybe"):
        glue_task("rte", tmp_path).examples("train")
    (tmp_path / "dev.tsv").write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError, match="UTF-8"):
        glue_task("rte", tmp_path).examples("dev")


def _tokenizer(checkpoint: Path):
    return load_pretrained(checkpoint).tokenizer


def test_features_truncate_the_longer_side_and_mark_segments(checkpoint: Path) -> None:
    tokenizer = _tokenizer(checkpoint)
    special = SpecialIds.of(tokenizer)
    task = SentenceTask("t", {}, TableSpec("a", "b", "c"), ("no", "yes"), "accuracy", ("accuracy",))
    long, short = "and the lord said unto moses " * 20, "in the beginning"
    [f] = task.featurize([Example(long, short, "yes")], tokenizer, special, max_length=32)
    n_short = len(tokenizer.encode(short, add_special_tokens=False).ids)
    assert len(f["input_ids"]) == 32 and f["label"] == 1
    assert f["input_ids"][0] == special.cls and f["input_ids"][-1] == special.sep
    assert f["token_type_ids"].count(1) == n_short + 1          # the short side is kept whole
    first_sep = f["input_ids"].index(special.sep)
    assert f["token_type_ids"][:first_sep + 1] == [0] * (first_sep + 1)
    [g] = task.featurize([Example(short, None, "no")], tokenizer, special, max_length=32)
    assert g["input_ids"] == [special.cls, *tokenizer.encode(short, add_special_tokens=False).ids, special.sep]
    batch = collate([f, g], special.pad)
    assert batch["attention_mask"].sum(1).tolist() == [32, len(g["input_ids"])]


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
def test_user_files(tmp_path: Path, suffix: str) -> None:
    rows = [("good film", "pos", "4.5"), ("bad film", "neg", "1.0"), ("fine film", "pos", "3.0")]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"review": t, "y": y, "score": float(s)}) + "\n" for t, y, s in rows))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text(sep.join(["review", "y", "score"]) + "\n" + "".join(sep.join(r) + "\n" for r in rows))
    task = user_task("classify", str(path), str(path), "review", "y")
    assert task.labels == ("neg", "pos") and task.scorers == ("accuracy", "f1")
    assert [e.label for e in task.examples("train")] == ["pos", "neg", "pos"]
    reg = user_task("regress", str(path), str(path), "review", "score")
    assert [e.label for e in reg.examples("dev")] == [4.5, 1.0, 3.0]
    with pytest.raises(UserError, match="no column 'text'"):
        user_task("classify", str(path), str(path), "text", "y")
    with pytest.raises(UserError, match="not a finite number"):
        user_task("regress", str(path), str(path), "review", "y").examples("dev")
    header_only = tmp_path / f"header{suffix}"
    if suffix != ".jsonl":       # a JSONL file has no header line: without rows it is simply empty
        header_only.write_text(path.read_text().splitlines()[0] + "\n")
        with pytest.raises(UserError, match="no data rows under its header"):
            user_task("classify", str(header_only), str(path), "review", "y").examples("train")


def test_layer_wise_lr_decay(checkpoint: Path) -> None:
    pre = load_pretrained(checkpoint)
    encoder = pre.build(0)
    task = SentenceTask("t", {}, TableSpec("a", "b"), ("0", "1"), "accuracy", ("accuracy",))
    head = task.head(encoder, 0.1)
    groups = parameter_groups(encoder, head, lr=1.0, weight_decay=0.01, layer_decay=0.5)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    L = len(encoder.layers)
    assert lr_of[id(encoder.embeddings.word.weight)] == (0.5 ** (L + 1), 0.01)
    assert lr_of[id(encoder.layers[0].attn.query.weight)] == (0.5 ** L, 0.01)
    assert lr_of[id(encoder.layers[L - 1].mlp_norm.weight)] == (0.5, 0.0)
    assert lr_of[id(head.out.weight)] == (1.0, 0.01) and lr_of[id(head.out.bias)] == (1.0, 0.0)
    assert len(lr_of) == len(list(encoder.parameters())) + len(list(head.parameters()))


def test_head_pooling_reads_cls_or_the_mean_of_real_tokens() -> None:
    """[CLS] pooling reads position 0 only; mean pooling is the average over real tokens, so padding
    (whatever its hidden states) changes nothing."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 8)                                                  # (B, T, D)
    lengths = torch.tensor([6, 4, 1])
    mask = torch.arange(6)[None, :] < lengths[:, None]                             # (B, T)
    for pooling in ("cls", "mean"):
        head = ClassificationHead(8, 2, 0.0, pooling).eval()
        out = head(hidden, mask)
        # brute force: run each example alone, its padding cut off
        alone = torch.cat([head(hidden[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(out, alone)
        scrambled = hidden.clone()
        scrambled[~mask] = 1e3
        torch.testing.assert_close(head(scrambled, mask), out)
        pooled = hidden[:, 0] if pooling == "cls" else torch.stack(
            [hidden[i, :n].mean(0) for i, n in enumerate(lengths.tolist())])
        torch.testing.assert_close(out, head.out(torch.tanh(head.dense(pooled))))
    changed = hidden.clone()
    changed[0, 3] += 1.0                                                           # a real token, not [CLS]
    cls, mean = ClassificationHead(8, 2, 0.0, "cls"), ClassificationHead(8, 2, 0.0, "mean")
    assert torch.equal(cls(changed, mask)[0], cls(hidden, mask)[0])
    assert not torch.equal(mean(changed, mask)[0], mean(hidden, mask)[0])
    with pytest.raises(UserError, match="pooling 'max' is not one of cls, mean"):
        SentenceTask("t", {}, TableSpec("a", "b"), ("0", "1"), "accuracy", ("accuracy",), pooling="max")


def _keyword_task(tmp_path: Path, pooling: str = "cls") -> SentenceTask:
    """A task a working loop must learn: the label says whether the text mentions 'moses'."""
    rows = keyword_rows(480, lambda i: 8)
    for name, part in (("train.tsv", rows[:400]), ("dev.tsv", rows[400:])):
        (tmp_path / name).write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in part))
    return user_task("classify", str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"), "text", "label",
                     pooling=pooling)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_finetune_learns_a_learnable_task_and_keeps_the_best(checkpoint: Path, tmp_path: Path, pooling: str) -> None:
    task = _keyword_task(tmp_path, pooling)
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(1, 2), epochs=3, batch_size=16, precision="fp32", max_length=32)
    results = sweep(task, load_pretrained(checkpoint, name="tiny"), cfg, tmp_path / "out", progress=False)
    summary = results["summary"]["dev"]
    assert summary["accuracy"]["median"] > 90, results["runs"]
    assert summary["f1"]["best"] >= summary["f1"]["median"]
    saved = json.loads((tmp_path / "out" / "best" / "finetune.json").read_text())
    assert saved["scores"]["dev"]["accuracy"] == summary["accuracy"]["best"]
    options = {"pooling": pooling, "text_column": "text", "text_pair_column": None, "label_column": "label",
               "skip_bad_rows": False}
    assert saved["labels"] == ["no", "yes"] and saved["task_options"] == options
    assert results["task_options"] == options
    assert (tmp_path / "out" / "results.md").read_text().startswith("# classify — tiny")
    # issue 21: beside the majority-class baseline, and F1 says which class it scores
    dev = [e.label for e in task.examples("dev")]
    assert results["baseline"]["dev"] == {"class": "no", "accuracy": pytest.approx(100 * dev.count("no") / len(dev)),
                                          "f1": 0.0}
    assert results["notes"] == {"f1": "F1 of the positive class 'yes' (the second class; --labels orders them)"}
    said = summary_lines(results)
    assert "; always answering the majority class 'no': accuracy " in said and "positive class 'yes'" in said
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| metric | median | best | majority class (no) |" in md and "f1: F1 of the positive class 'yes'" in md
    # the saved weights reproduce the saved score
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "out" / "best" / "model.safetensors"))
    pre = load_pretrained(checkpoint)
    encoder = pre.build(0)
    head = task.head(encoder, 0.1)
    encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    special = SpecialIds.of(pre.tokenizer)
    dev = task.examples("dev")
    scores = task.evaluate(encoder, head, dev, task.featurize(dev, pre.tokenizer, special, 32), pre.tokenizer, 7,
                      lambda: torch.autocast("cpu", enabled=False), torch.device("cpu"))
    assert scores["accuracy"] == pytest.approx(summary["accuracy"]["best"])


def test_early_stopping(checkpoint: Path, tmp_path: Path) -> None:
    task = _keyword_task(tmp_path)
    cfg = FinetuneConfig(lrs=(1e-12,), epochs=2, batch_size=16, eval_every=2, patience=2, precision="fp32",
                         max_length=32, dropout=0.0)
    results = sweep(task, load_pretrained(checkpoint), cfg, tmp_path / "out", progress=False)
    [run] = results["runs"]
    assert run["stopped_early"] and [h["step"] for h in run["history"]] == [2, 4, 6]


def test_history_train_loss_is_the_mean_since_the_previous_evaluation(checkpoint: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    task = _keyword_task(tmp_path)
    seen, loss = [], task.loss

    def recording(head, hidden, batch):
        value, count = loss(head, hidden, batch)
        if torch.is_grad_enabled():                  # a training step, not an evaluation batch
            seen.append((value.item(), count.item()))
        return value, count

    monkeypatch.setattr(task, "loss", recording)
    cfg = FinetuneConfig(lrs=(1e-3,), epochs=1, batch_size=16, eval_every=3, precision="fp32", max_length=32)
    results = sweep(task, load_pretrained(checkpoint), cfg, tmp_path / "out", progress=False)
    history = results["runs"][0]["history"]
    steps = [h["step"] for h in history]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24, 25] and len(seen) == 25
    for start, h in zip([0, *steps], history):
        part = seen[start:h["step"]]
        assert h["train_loss"] == pytest.approx(sum(v for v, _ in part) / sum(c for _, c in part), rel=1e-6)


def test_random_init_and_hf_directory(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from unimask.export.hf import export_checkpoint
    pre = load_pretrained(checkpoint)
    export_checkpoint(checkpoint, tmp_path / "hf")
    from_hf = load_pretrained(tmp_path / "hf")
    assert from_hf.config == pre.config
    assert from_hf.tokenizer.get_vocab() == pre.tokenizer.get_vocab()
    assert all(torch.equal(v, from_hf.state[k]) for k, v in pre.state.items())
    # the MLM checkpoint's tied LM head is there for generation tasks (pretrained_head = "lm")
    from safetensors.torch import load_file
    from unimask.export.hf import find_checkpoint
    saved = load_file(str(find_checkpoint(checkpoint) / "model.safetensors"))
    assert pre.heads["lm"].keys() == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    assert all(torch.equal(v, saved[f"objective.head.{k}"]) for k, v in pre.heads["lm"].items())
    assert from_hf.heads.keys() == {"lm"}          # the exported BertForMaskedLM carries the head back
    assert all(torch.equal(v, from_hf.heads["lm"][k]) for k, v in pre.heads["lm"].items())
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_config, "pad_token_id": None}))
    with pytest.raises(UserError, match="config.json does not describe a usable BERT"):   # a hand-edited config
        load_pretrained(tmp_path / "hf")
    random = load_pretrained(checkpoint, random_init=True)
    assert random.state is None and random.name.endswith("(random init)") and random.heads == {}
    a, b = random.build(3).state_dict(), random.build(3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.attn.query.weight"], pre.state["layers.0.attn.query.weight"])


def test_encoder_dropout_is_the_fine_tuning_value(checkpoint: Path) -> None:
    """The checkpoint's dropout is replaced (pretraining may use none, fine-tuning BERT's 0.1): the
    weights are the pretrained ones, every dropout module and the attention dropout take the value."""
    pre = load_pretrained(checkpoint)
    for p in (0.0, 0.3):
        enc = pre.build(1, p)
        assert enc.config.dropout == enc.config.attention_dropout == p
        rates = {m.p for m in enc.modules() if isinstance(m, torch.nn.Dropout)}
        assert rates == {p} and {layer.attn.attention_dropout for layer in enc.layers} == {p}
        assert all(torch.equal(v, pre.state[k]) for k, v in enc.state_dict().items())
    assert pre.build(1).config == pre.config
    with pytest.raises(UserError, match="encoder_dropout"):
        FinetuneConfig(encoder_dropout=1.0)


def test_cli_and_report(checkpoint: Path, tmp_path: Path, capsys) -> None:
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    _keyword_task(task_dir)
    common = ["finetune", "--checkpoint", str(checkpoint), "--task", "classify", "--train", str(task_dir / "train.tsv"),
              "--dev", str(task_dir / "dev.tsv"), "--text-column", "text", "--label-column", "label",
              "--epochs", "0.5", "--max-length", "32", "--quiet", "--precision", "fp32"]
    assert main([*common, "--out", str(tmp_path / "a"), "--name", "pretrained"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--random-init", "--name", "scratch"]) == 0
    assert main([*common, "--out", str(tmp_path / "c"), "--name", "pretrained", "--pooling", "mean"]) == 0
    assert "classify dev (1 runs): accuracy median" in capsys.readouterr().out
    assert "pooling: mean" in (tmp_path / "c" / "results.md").read_text()
    t = table(collect([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")]))
    assert list(t["rows"]) == ["pretrained", "scratch", "pretrained (mean pooling)"]
    assert t["columns"] == ["classify accuracy", "average"]
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| pretrained |") + out.count("\n| scratch |") == 2 and (tmp_path / "r.json").is_file()
    from_finetuned = [a if a != str(checkpoint) else str(tmp_path / "a" / "best") for a in common]
    assert main([*from_finetuned, "--out", str(tmp_path / "e")]) == 2          # a fine-tuned model is no start
    assert "output of `unimask finetune`" in capsys.readouterr().err and not (tmp_path / "e").exists()
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\n")
    bad_args = [a if a != str(task_dir / "train.tsv") else str(bad) for a in common]
    assert main([*bad_args, "--out", str(tmp_path / "d")]) == 2
    assert "no data rows" in capsys.readouterr().err and not (tmp_path / "d").exists()   # bad input: no run directory
    assert main(["finetune", "--checkpoint", str(checkpoint), "--task", "rte"]) == 2
    assert "--task rte needs --data" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_mnli_and_qqp_layouts(tmp_path: Path) -> None:
    """MNLI and QQP are not in ../shared: their loaders are checked on files in the GLUE script's layout."""
    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
    row = "0\t1\t1n\tgov\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe cat sat.\tA cat sat.\tentailment\t{}\n"
    for name, label in (("train", "neutral"), ("dev_matched", "entailment"), ("dev_mismatched", "contradiction")):
        (mnli / f"{name}.tsv").write_text(head + row.format(label))
    task = glue_task("mnli", mnli)
    assert task.eval_splits == ("dev_matched", "dev_mismatched")
    assert [task.examples(s)[0].label for s in ("train", "dev_matched", "dev_mismatched")] == \
        ["neutral", "entailment", "contradiction"]
    assert task.examples("train")[0].text == "The cat sat." and task.examples("train")[0].pair == "A cat sat."
    qqp = tmp_path / "QQP"
    qqp.mkdir()
    text = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n" + "".join(
        f"{i}\t{2 * i}\t{2 * i + 1}\tHow do I {i}?\tWhat is {i}?\t{i % 2}\n" for i in range(20)) + "broken\trow\n"
    for name in ("train.tsv", "dev.tsv"):
        (qqp / name).write_text(text)
    with pytest.raises(UserError, match=r"dev.tsv line 22: 2 fields where the header has 6 .*--skip-bad-rows"):
        glue_task("qqp", qqp).examples("dev")                        # a malformed row is named, not dropped
    task = glue_task("qqp", qqp, skip_bad_rows=True)
    assert len(task.examples("dev")) == 20 and task.metric == "f1"   # ... or dropped when asked, and counted


def test_squad_end_to_end_on_xquad_split_by_article(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """Fine-tune a few steps on the SQuAD-format file of ../shared, split into train/dev by article."""
    data = json.loads(shared_data("squad", "xquad.en.json").read_text())
    articles = data["data"]
    (tmp_path / "train.json").write_text(json.dumps({"version": "1.1", "data": articles[:40]}))
    (tmp_path / "dev.json").write_text(json.dumps({"version": "1.1", "data": articles[40:42]}))
    assert main(["finetune", "--checkpoint", str(checkpoint), "--task", "squad", "--train", str(tmp_path / "train.json"),
                 "--dev", str(tmp_path / "dev.json"), "--max-length", "64", "--doc-stride", "32",
                 "--max-train-examples", "48", "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
                 "--quiet", "--out", str(tmp_path / "ft")]) == 0
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    dev = results["summary"]["dev"]
    assert set(dev) >= {"exact", "f1"} and 0 <= dev["exact"]["median"] <= dev["f1"]["median"] <= 100
    assert results["metric"] == "f1" and (tmp_path / "ft" / "best" / "model.safetensors").is_file()
    assert "squad dev (1 runs): exact median" in capsys.readouterr().out
    # `unimask predict` answers the dev questions as the evaluation did: the official file, the same scores
    assert main(["predict", "--model", str(tmp_path / "ft"), "--input", str(tmp_path / "dev.json"), "--output",
                 str(tmp_path / "predictions.json"), "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    examples = read_squad(tmp_path / "dev.json")
    assert list(predictions) == [e.id for e in examples] and all(isinstance(a, str) for a in predictions.values())
    scores = squad_scores(predictions, examples, v2=False)
    assert scores["f1"] == pytest.approx(dev["f1"]["best"]) and scores["exact"] == pytest.approx(dev["exact"]["best"])


@pytest.mark.slow
def test_sst2_end_to_end(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """A few steps on the real SST-2 files; the whole dev set is scored."""
    assert main(["finetune", "--checkpoint", str(checkpoint), "--task", "sst2", "--data", str(shared_data("glue", "SST-2")),
                 "--max-train-examples", "64", "--epochs", "1", "--batch-size", "16", "--max-length", "64",
                 "--precision", "fp32", "--quiet", "--out", str(tmp_path / "sst2")]) == 0
    results = json.loads((tmp_path / "sst2" / "results.json").read_text())
    [run] = results["runs"]
    assert results["train_examples"] == 64 and [h["step"] for h in run["history"]] == [4]
    assert 0 < results["summary"]["dev"]["accuracy"]["median"] < 100
    assert "sst2 dev (1 runs): accuracy median" in capsys.readouterr().out
    # the GLUE test split through `unimask predict --glue-submission`: the leaderboard's layout
    test = shared_data("glue", "SST-2", "test.tsv")
    assert main(["predict", "--model", str(tmp_path / "sst2"), "--input", str(test), "--glue-submission",
                 str(tmp_path / "submission"), "--device", "cpu", "--quiet"]) == 0
    lines = (tmp_path / "submission" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1822
    assert [line.split("\t")[0] for line in lines[1:]] == [line.split("\t")[0] for line in test.read_text().splitlines()[1:]]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


@pytest.mark.slow
def test_an_output_is_never_half_written_nor_silently_replaced(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    """Issue 21: results of an earlier fine-tuning are kept unless --overwrite; an interrupted sweep
    leaves no output directory (everything is written into a hidden sibling renamed at the end)."""
    import unimask.tasks.finetune as ft

    task = _keyword_task(tmp_path)
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(1,), epochs=1, batch_size=16, precision="fp32", max_length=32)
    pre = load_pretrained(checkpoint, name="tiny")
    out = tmp_path / "runs" / "out"
    sweep(task, pre, cfg, out, progress=False)
    first = (out / "results.json").read_text()
    with pytest.raises(UserError, match="already holds a fine-tuning output; pass --overwrite"):
        sweep(task, pre, cfg, out, progress=False)
    assert (out / "results.json").read_text() == first
    sweep(task, pre, replace(cfg, seeds=(2,)), out, progress=False, overwrite=True)
    assert json.loads((out / "results.json").read_text())["runs"][0]["seed"] == 2

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ft, "finetune_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(task, pre, cfg, tmp_path / "runs" / "cut", progress=False)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["out"]      # no "cut", no temporary
