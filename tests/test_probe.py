"""`unimask probe`: per-layer features, mean pooling, the probe against scikit-learn by hand, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import keyword_rows, shared_data, tiny_run_config
from unimask.cli import main
from unimask.tasks.base import SpecialIds, collate
from unimask.tasks.finetune import load_pretrained
from unimask.tasks.glue import user_task
from unimask.tasks.probe import ProbeConfig, fit_probe, layer_features, probe


@pytest.fixture(scope="module")
def files(kjv_data, tmp_path_factory) -> Path:
    """A 2-step tiny MLM run (run/) and a classify TSV pair (train.tsv, dev.tsv): does the text say 'moses'?"""
    from unimask.train.loop import train

    root = tmp_path_factory.mktemp("probe")
    train(tiny_run_config(kjv_data, steps=2, save_every=2), root / "run", progress=False)
    rows = keyword_rows(300, lambda i: 4 + i % 9)
    for name, part in (("train.tsv", rows[:200]), ("dev.tsv", rows[200:])):
        (root / name).write_text("id\ttext\tlabel\n" + "".join(f"r{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(part)))
    return root


def _task(root: Path):
    return user_task("classify", str(root / "train.tsv"), str(root / "dev.tsv"), "text", "label")


def _hooked_states(encoder, feature: dict) -> list[torch.Tensor]:
    """Every layer's (T, D) states of one unpadded text, caught by forward hooks on the encoder's own
    modules during an ordinary `encoder(...)` call (an independent route from analyze.layer_states)."""
    caught = []
    handles = [m.register_forward_hook(lambda _m, _i, out: caught.append(out[0]))
               for m in [encoder.embeddings, *encoder.layers]]
    try:
        with torch.no_grad():
            final = encoder(torch.tensor([feature["input_ids"]]),
                            token_type_ids=torch.tensor([feature["token_type_ids"]]))[0]
    finally:
        for h in handles:
            h.remove()
    if encoder.final_norm is not None:        # pre-LN: the encoder's output is the normed last block
        caught[-1] = final
    assert torch.equal(caught[-1], final)
    return caught


def _features(root: Path, split: str, max_length: int = 32):
    pretrained = load_pretrained(root / "run")
    task = _task(root)
    feats = task.featurize(task.examples(split), pretrained.tokenizer, SpecialIds.of(pretrained.tokenizer), max_length)
    return pretrained, task, feats


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_layer_features_are_embeddings_then_blocks_then_the_encoder_output(files: Path, norm: str):
    """(b) layer 0 = the embedding output, the last = `encoder(...)`; (c) mean pooling ignores padding:
    padded, length-sorted batches give the features of one text at a time."""
    pretrained, _, feats = _features(files, "dev")
    feats = feats[:24]
    pretrained.config.norm = norm
    pretrained.state = None if norm == "pre" else pretrained.state    # pre-LN: a random pre-LN encoder
    encoder = pretrained.build(0).eval()
    pad = SpecialIds.of(pretrained.tokenizer).pad
    ours = layer_features(encoder, feats, pad, batch_size=7)             # (2, L + 1, N, D)
    assert ours.shape == (2, encoder.config.num_layers + 1, len(feats), encoder.config.hidden_size)
    assert len({len(f["input_ids"]) for f in feats}) > 3               # the batches really are padded
    for i, f in enumerate(feats):
        states = _hooked_states(encoder, f)
        ids, types = torch.tensor([f["input_ids"]]), torch.tensor([f["token_type_ids"]])
        with torch.no_grad():
            embedded = encoder.embed(ids, token_type_ids=types)[0][0]                # (T, D)
            final = encoder(ids, token_type_ids=types)[0]                          # (T, D)
        close = dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours[:, 0, i], torch.stack([embedded[0], embedded.mean(0)]), **close)
        torch.testing.assert_close(ours[:, -1, i], torch.stack([final[0], final.mean(0)]), **close)
        for layer, h in enumerate(states):
            torch.testing.assert_close(ours[0, layer, i], h[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours[1, layer, i], h.mean(0), atol=1e-5, rtol=1e-5)
    # one padded batch of every length gives the same features as batches of 7 in length order
    assert not collate(feats, pad)["attention_mask"].all()
    torch.testing.assert_close(layer_features(encoder, feats, pad, batch_size=len(feats)), ours, atol=1e-5, rtol=1e-5)


def test_fit_probe_is_scikit_learn_by_hand():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)) * rng.uniform(0.1, 20, 12) + 5
    y = (x[:, 0] / 20 + x[:, 1] / 3 + rng.standard_normal(300) > 0.3).astype(int)
    grid = (0.001, 0.1, 10.0)
    fitted = fit_probe(x, y, grid, 0.25, seed=3)
    fit, held = train_test_split(np.arange(300), test_size=0.25, random_state=3, stratify=y)
    scaler = StandardScaler().fit(x[fit])
    held_acc = {c: 100 * np.mean(LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x[fit]), y[fit])
                                 .predict(scaler.transform(x[held])) == y[held]) for c in grid}
    assert fitted.holdout == pytest.approx(held_acc)
    assert fitted.c == min(c for c in grid if held_acc[c] == max(held_acc.values()))
    model = LogisticRegression(C=fitted.c, max_iter=1000).fit(StandardScaler().fit_transform(x), y)
    np.testing.assert_array_equal(fitted.predict(x), model.predict(StandardScaler().fit(x).transform(x)))
    assert fitted.converged


@pytest.mark.slow
def test_probe_dev_accuracy_equals_scikit_learn_on_hooked_features(files: Path):
    """(a) the command's dev accuracy for every layer and pooling = scikit-learn fitted by hand with its C
    on features caught one text at a time by forward hooks (within one example: see below)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out = files / "out-a"
    assert main(["probe", "--checkpoint", str(files / "run"), "--task", "classify", "--train", str(files / "train.tsv"),
                 "--dev", str(files / "dev.tsv"), "--text-column", "text", "--label-column", "label",
                 "--precision", "fp32", "--device", "cpu", "--max-length", "32", "--batch-size", "16",
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "probe.json").read_text())
    pretrained = load_pretrained(files / "run")
    encoder = pretrained.build(1).eval()
    mine = {}
    for split in ("train", "dev"):
        _, task, feats = _features(files, split)
        states = [_hooked_states(encoder, f) for f in feats]
        mine[split] = ({(layer, "cls"): np.stack([s[layer][0].numpy() for s in states]) for layer in range(3)}
                       | {(layer, "mean"): np.stack([s[layer].mean(0).numpy() for s in states]) for layer in range(3)},
                       np.array([f["label"] for f in feats]))
    assert len(result["results"]) == 6 and result["examples"] == {"train": 200, "dev": 100}
    for r in result["results"]:
        key = (r["layer"], r["pooling"])
        (x, y), (x_dev, y_dev) = (mine["train"][0][key], mine["train"][1]), (mine["dev"][0][key], mine["dev"][1])
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(C=r["C"], max_iter=1000).fit(scaler.transform(x), y)
        accuracy = 100 * np.mean(model.predict(scaler.transform(x_dev)) == y_dev)
        # the command's features come from padded batches, these one text at a time: they agree to ~1e-6,
        # which can move an example that sits on the decision boundary; at most one may differ
        assert abs(r["scores"]["dev"]["accuracy"] - accuracy) <= 100 / len(y_dev) + 1e-9, key
        assert abs(r["train_accuracy"] - 100 * np.mean(model.predict(scaler.transform(x)) == y)) <= 100 / len(y) + 1e-9, key
        assert set(r["scores"]["dev"]) == {"accuracy", "f1"} and r["C"] in ProbeConfig().c_grid
    md = (out / "probe.md").read_text()
    assert "| layer | cls accuracy | cls f1 | mean accuracy | mean f1 |" in md
    assert len([line for line in md.splitlines() if line.startswith("| 2 |")]) == 2
    base = result["baseline"]["dev"]                      # issue 21: beside the majority class, F1's class named
    assert base["class"] in result["labels"] and f"| majority class ({base['class']}) | {base['accuracy']:.2f} |" in md
    assert f"f1: F1 of the positive class {result['labels'][1]!r}" in md


@pytest.mark.slow
def test_probe_on_glue_sst2(files: Path, capsys):
    """(d) SST-2 from the shared GLUE folder with 200 training sentences writes probe.json and probe.md."""
    data = shared_data("glue", "SST-2")
    out = files / "sst2"
    assert main(["probe", "--checkpoint", str(files / "run"), "--task", "sst2", "--data", str(data),
                 "--max-train-examples", "200", "--max-length", "48", "--out", str(out), "--quiet",
                 "--c-grid", "0.1,1", "--precision", "fp32"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["examples"] == {"train": 200, "dev": 872} and result["metric"] == "accuracy"
    assert {(r["layer"], r["pooling"]) for r in result["results"]} == {(l, p) for l in range(3) for p in ("cls", "mean")}
    assert all(0 <= r["scores"]["dev"]["accuracy"] <= 100 and r["C"] in (0.1, 1.0) for r in result["results"])
    assert "## dev (872 texts)" in (out / "probe.md").read_text()
    assert "best: layer" in capsys.readouterr().out


def test_a_non_empty_out_needs_overwrite(files: Path, capsys):
    out = files / "again"
    argv = ["probe", "--checkpoint", str(files / "run"), "--task", "classify", "--train", str(files / "train.tsv"),
            "--dev", str(files / "dev.tsv"), "--text-column", "text", "--label-column", "label", "--out", str(out),
            "--quiet", "--precision", "fp32", "--max-length", "32"]
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "notes.txt").exists()
    assert main(argv + ["--overwrite", "--random-init", "--c-grid", "1", "--name", "baseline"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["random_init"] and result["model"] == "baseline" and all(r["C"] == 1.0 for r in result["results"])
    assert sorted(p.name for p in out.iterdir()) == ["probe.json", "probe.md"]


def test_bad_input_is_one_line_and_writes_nothing(files: Path, tmp_path: Path, capsys):
    """(e) a regression task or a missing column: a one-line error, exit 2, no output directory."""
    base = ["probe", "--checkpoint", str(files / "run"), "--train", str(files / "train.tsv"),
            "--dev", str(files / "dev.tsv"), "--quiet"]
    cases = {
        "regression": ["--task", "regress", "--text-column", "text", "--label-column", "label"],
        "column": ["--task", "classify", "--text-column", "sentence", "--label-column", "label"],
        "grid": ["--task", "classify", "--text-column", "text", "--label-column", "label", "--c-grid", "1,x"],
        "length": ["--task", "classify", "--text-column", "text", "--label-column", "label", "--max-length", "999"],
    }
    expected = {"regression": "regression task", "column": "no column 'sentence'", "grid": "--c-grid",
                "length": "exceeds the model's 64 positions"}
    for case, extra in cases.items():
        out = tmp_path / case
        assert main(base + extra + ["--out", str(out)]) == 2, case
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected[case] in err, (case, err)
        assert not out.exists() and not out.with_name(out.name + ".tmp").exists(), case
    assert main(["probe", "--checkpoint", str(files / "run"), "--task", "stsb", "--data",
                 str(shared_data("glue", "STS-B")), "--out", str(tmp_path / "stsb")]) == 2
    assert "regression task" in capsys.readouterr().err and not (tmp_path / "stsb").exists()


def test_probe_function_refuses_regression(files: Path):
    from unimask.errors import UserError

    task = user_task("regress", str(files / "train.tsv"), str(files / "dev.tsv"), "text", "label")
    with pytest.raises(UserError, match="regression"):
        probe(task, load_pretrained(files / "run"), ProbeConfig(), progress=False)
