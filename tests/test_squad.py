"""SQuAD task: reading, sliding windows whose offsets give the gold answers back, n-best decoding, v2.0 nulls."""

from __future__ import annotations

import json
import types

import pytest
import torch

from conftest import shared_data
from unimask.data.prepare import PrepareConfig, _train_tokenizer
from unimask.errors import UserError
from unimask.tasks.base import SpecialIds, collate
from unimask.tasks.metrics import normalize_answer
from unimask.tasks.squad import SquadTask, decode_answers, read_squad


def tokenizer_for(texts, vocab_size=2000):
    """unimask's own BERT-style WordPiece tokenizer, trained on `texts`."""
    return _train_tokenizer(iter(texts), PrepareConfig(vocab_size=vocab_size, min_frequency=1))


@pytest.fixture(scope="module")
def xquad():
    """XQuAD English (SQuAD v1.1 format), a tokenizer trained on its contexts, and its features."""
    examples = read_squad(shared_data("squad", "xquad.en.json"))
    tok = tokenizer_for(list(dict.fromkeys(ex.context for ex in examples)))
    task = SquadTask(doc_stride=32)
    features = task.featurize(examples, tok, SpecialIds.of(tok), max_length=128)
    return task, examples, tok, features


def gold_text(example, feature):
    offsets = feature["_offsets"]
    return example.context[offsets[feature["start_position"]][0]: offsets[feature["end_position"]][1]]


def test_xquad_windows_give_back_every_gold_answer(xquad):
    task, examples, tok, features = xquad
    special = SpecialIds.of(tok)
    assert len(examples) == 1190 and not any(ex.is_impossible for ex in examples)
    assert len(features) > 3 * len(examples)  # max_length 128, stride 32: many windows
    found, widened = set(), set()
    for f in features:
        ids, types, offsets = f["input_ids"], f["token_type_ids"], f["_offsets"]
        n_query = types.index(1) - 2
        assert len(ids) <= 128 and len(types) == len(offsets) == len(ids)
        assert ids[0] == special.cls and ids[n_query + 1] == special.sep and ids[-1] == special.sep
        assert types == [0] * (n_query + 2) + [1] * (len(ids) - n_query - 2)
        assert offsets[: n_query + 2] == [None] * (n_query + 2) and offsets[-1] is None
        if f["start_position"] == 0:
            assert f["end_position"] == 0
            continue
        assert n_query + 2 <= f["start_position"] <= f["end_position"] < len(ids) - 1
        example = examples[f["example"]]
        text, gold = normalize_answer(gold_text(example, f)), normalize_answer(example.answers[0][0])
        if text == gold:
            found.add(f["example"])
        else:  # the answer ends inside a token: the span widens to whole tokens
            assert gold in text, (text, gold)
            widened.add(f["example"])
    assert not found & widened
    assert len(found) >= 0.995 * len(examples), (len(examples) - len(found), "answers not given back")
    assert len(found | widened) == len(examples)  # every answer sits fully inside some window


def test_windows_cover_the_context_with_the_stride(xquad):
    task, examples, tok, features = xquad
    by_example: dict[int, list[dict]] = {}
    for f in features:
        by_example.setdefault(f["example"], []).append(f)
    for index in (0, 500, 1189):
        context_tokens = tok.encode(examples[index].context, add_special_tokens=False).offsets
        windows = [[o for o in f["_offsets"] if o is not None] for f in by_example[index]]
        assert windows[0][0] == context_tokens[0] and windows[-1][-1] == context_tokens[-1]
        for before, after in zip(windows, windows[1:]):  # next window starts 32 tokens later
            assert after[0] == before[32] or after[0] == context_tokens[len(context_tokens) - len(after)]
        covered = {o for w in windows for o in w}
        assert covered == set(context_tokens)


def test_decoding_gold_logits_gives_back_the_answers(xquad):
    task, examples, tok, features = xquad
    width = max(len(f["input_ids"]) for f in features) + 5  # padded wider than any feature
    start = torch.randn(len(features), width)  # (N, T) noise below the gold logits
    end = torch.randn(len(features), width)
    for i, f in enumerate(features):
        if f["start_position"]:
            start[i, f["start_position"]] = end[i, f["end_position"]] = 10.0
    scores = SquadTask(max_answer_length=64).score(examples, features, (start, end))  # xquad has 37-token answers
    assert set(scores) == {"exact", "f1"}
    assert scores["exact"] >= 99.9 and scores["f1"] >= 99.9  # only an answer ending inside a token misses
    assert task.score(examples, features, (start, end))["exact"] < scores["exact"]  # 30 tokens cut some off


def write_squad(path, paragraphs, version="v2.0"):
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def tiny_v2(tmp_path):
    """Two answerable and one impossible question on one short context."""
    context = "The Eiffel Tower is in Paris. It was built in 1889 by Gustave Eiffel's company."
    qas = [
        {"id": "where", "question": "Where is the Eiffel Tower?", "is_impossible": False,
         "answers": [{"text": "Paris", "answer_start": context.index("Paris")}]},
        {"id": "when", "question": "When was it built?", "is_impossible": False,
         "answers": [{"text": "1889", "answer_start": context.index("1889")}]},
        {"id": "height", "question": "How tall is the Tower?", "is_impossible": True, "answers": [],
         "plausible_answers": [{"text": "1889", "answer_start": context.index("1889")}]},
    ]
    path = write_squad(tmp_path / "tiny.json", [{"context": context, "qas": qas}])
    examples = read_squad(path)
    tok = tokenizer_for([context] + [qa["question"] for qa in qas], vocab_size=200)
    return path, examples, tok


def span_logits(features, spans):
    """(N, T) start and end logits: 8 on each feature's (start, end) in `spans`, -10 elsewhere."""
    width = max(len(f["input_ids"]) for f in features)
    start, end = torch.full((len(features), width), -10.0), torch.full((len(features), width), -10.0)
    for i, (s, e) in enumerate(spans):
        start[i, s] = end[i, e] = 8.0
    return start, end


def token_at(example, feature, text):
    """The index of the feature's token that starts at `text` in the context."""
    return [o[0] if o else None for o in feature["_offsets"]].index(example.context.index(text))


def test_v2_null_threshold(tiny_v2):
    path, examples, tok = tiny_v2
    assert [ex.is_impossible for ex in examples] == [False, False, True] and examples[2].answers == ()
    task = SquadTask(train=path, dev=path)
    features = task.featurize(examples, tok, SpecialIds.of(tok), max_length=64)
    assert len(features) == 3 and [f["start_position"] > 0 for f in features] == [True, True, False]
    paris = features[0]["start_position"], features[0]["end_position"]
    year = features[1]["start_position"], features[1]["end_position"]
    assert gold_text(examples[0], features[0]) == "Paris" and gold_text(examples[1], features[1]) == "1889"
    # the impossible question: null score 8 + 8 = 16 vs its best span 4 + 4 = 8 (difference 8)
    start, end = span_logits(features, [paris, year, (0, 0)])
    start[2, token_at(examples[2], features[2], "1889")] = end[2, token_at(examples[2], features[2], "1889")] = 4.0
    assert task.score(examples, features, (start, end)) == pytest.approx(
        {"exact": 100.0, "f1": 100.0, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
         "NoAns_exact": 100.0, "NoAns_f1": 100.0})
    lenient = SquadTask(null_threshold=10.0)  # the null must beat the best span by more than 10
    answers = decode_answers(examples, features, start, end, null_threshold=10.0)
    assert answers == {"where": "Paris", "when": "1889", "height": "1889"}
    assert lenient.score(examples, features, (start, end))["NoAns_exact"] == 0.0
    # as v1.1 the null is never predicted; answerable questions lose to the null when it is strong
    assert SquadTask(version="1.1").score(examples, features, (start, end)) == {
        "exact": pytest.approx(100 * 2 / 3), "f1": pytest.approx(100 * 2 / 3)}
    start[0, 0] = end[0, 0] = 20.0
    assert decode_answers(examples, features, start, end, null_threshold=0.0)["where"] == ""


def test_decode_respects_span_rules(tiny_v2):
    path, examples, tok = tiny_v2
    features = SquadTask().featurize(examples[:1], tok, SpecialIds.of(tok), max_length=64)
    s, e = features[0]["start_position"], features[0]["end_position"]
    start, end = span_logits(features, [(s, e)])
    start[0, :s] = -100.0
    end[0, s - 1] = 50.0  # an end just before the start (score 58) is never chosen
    start[0, 1] = end[0, 1] = 50.0  # question tokens are never an answer
    assert decode_answers(examples[:1], features, start, end) == {"where": "Paris"}
    last = len(features[0]["input_ids"]) - 2  # the last context token
    start, end = span_logits(features, [(s, last)])
    assert decode_answers(examples[:1], features, start, end, max_answer_length=last - s) != {
        "where": examples[0].context[features[0]["_offsets"][s][0]:]}
    assert decode_answers(examples[:1], features, start, end, max_answer_length=last - s + 1) == {
        "where": examples[0].context[features[0]["_offsets"][s][0]: features[0]["_offsets"][last][1]]}


def test_head_loss_and_predict_ignore_padding(tiny_v2):
    path, examples, tok = tiny_v2
    task = SquadTask()
    features = task.featurize(examples, tok, SpecialIds.of(tok), max_length=64)
    batch = collate(features, pad_id=0)
    assert "_offsets" not in batch and batch["start_position"].shape == (3,)
    torch.manual_seed(0)
    head = task.head(types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=16)), dropout=0.1)
    assert head.weight.std().item() == pytest.approx(0.02, rel=0.5) and not head.bias.any()
    hidden = torch.randn(3, batch["input_ids"].shape[1], 16)  # (B, T, D)
    loss, count = task.loss(head, hidden, batch)
    assert count.item() == 3 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    # the same batch padded 7 tokens wider: same loss, same predictions on the real tokens
    wide = {k: torch.nn.functional.pad(v, (0, 7)) if v.ndim == 2 else v for k, v in batch.items()}
    wide_hidden = torch.cat([hidden, torch.randn(3, 7, 16)], dim=1)  # (B, T + 7, D)
    assert task.loss(head, wide_hidden, wide)[0].item() == pytest.approx(loss.item(), rel=1e-5)
    start, end = task.predict(head, hidden, batch)
    wide_start, _ = task.predict(head, wide_hidden, wide)
    assert start.shape == end.shape == batch["input_ids"].shape and start.dtype == torch.float32
    n = batch["attention_mask"].sum(1)
    for i in range(3):
        assert torch.allclose(start[i, : n[i]], wide_start[i, : n[i]])


def test_long_questions_are_cut_and_max_length_checked(tiny_v2):
    path, examples, tok = tiny_v2
    features = SquadTask(max_query_length=3).featurize(examples, tok, SpecialIds.of(tok), max_length=64)
    assert all(f["token_type_ids"].index(1) == 3 + 2 for f in features)
    with pytest.raises(UserError, match="max_length 8 leaves no room"):
        SquadTask().featurize(examples, tok, SpecialIds.of(tok), max_length=8)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_squad(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"data": [')
    with pytest.raises(UserError, match="not valid JSON"):
        read_squad(tmp_path / "broken.json")
    (tmp_path / "glue.json").write_text(json.dumps([{"sentence": "a", "label": 1}]))
    with pytest.raises(UserError, match='not in SQuAD format.*expected .*"paragraphs"'):
        read_squad(tmp_path / "glue.json")
    qa = {"id": "q", "question": "?", "answers": [{"text": "a"}]}  # no answer_start
    path = write_squad(tmp_path / "noanswerstart.json", [{"context": "a", "qas": [qa]}])
    with pytest.raises(UserError, match="answer_start") as info:
        read_squad(path)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="no SQuAD train file"):
        SquadTask(dev=path).examples("train")
