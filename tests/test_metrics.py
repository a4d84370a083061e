"""GLUE metrics against scipy / scikit-learn and hand-computed values; SQuAD EM/F1 as the official script."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from unimask.tasks.metrics import (accuracy, exact_match, f1, matthews, normalize_answer, pearson, spearman,
                                   squad_scores, token_f1)


def test_accuracy_and_mrpc_like_f1_by_hand():
    labels, preds = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FP 1, FN 1, TN 1
    assert accuracy(labels, preds) == pytest.approx(60.0)
    assert f1(labels, preds) == pytest.approx(100 * 2 / 3)  # precision = recall = 2/3
    assert f1([0, 0, 1], [0, 0, 0]) == 0.0  # no positive predicted: 0, not a warning-NaN


def test_cola_like_matthews_by_hand():
    labels, preds = [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]  # TP 2, TN 2, FP 1, FN 1
    assert matthews(labels, preds) == pytest.approx(100 * (2 * 2 - 1 * 1) / 9)  # / sqrt(3*3*3*3)
    assert matthews(labels, [1] * 6) == 0.0  # a constant classifier (CoLA's early epochs)
    assert matthews(labels, labels) == pytest.approx(100.0)


def test_stsb_like_correlations():
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(50.0)  # cov 1 / sqrt(2 * 2)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(50.0)
    x = np.linspace(0, 5, 11)
    assert spearman(x, x ** 3) == pytest.approx(100.0)  # monotone: perfect rank correlation
    assert pearson(x, x ** 3) < 100.0
    rng = np.random.default_rng(0)
    gold, pred = rng.uniform(0, 5, 200), rng.uniform(0, 5, 200)
    pred = 0.7 * gold + pred
    assert pearson(gold, pred) == pytest.approx(100 * stats.pearsonr(gold, pred)[0])
    assert spearman(gold, pred) == pytest.approx(100 * stats.spearmanr(gold, pred)[0])
    assert pearson(torch.tensor(gold), torch.tensor(pred)) == pytest.approx(pearson(gold, pred))
    assert pearson(gold, np.full(200, 2.5)) == 0.0 and spearman(gold, np.full(200, 2.5)) == 0.0


def test_normalize_answer_official_rules():
    assert normalize_answer("The Cat") == "cat"
    assert normalize_answer("  Hello,   World! ") == "hello world"
    assert normalize_answer("an apple a day, the end") == "apple day end"
    assert normalize_answer("Theater at Anaheim") == "theater at anaheim"  # articles only as words
    assert normalize_answer("the") == ""
    assert exact_match("The Cat", "cat") == 1.0
    assert exact_match("Denver Broncos", "the Denver Broncos.") == 1.0
    assert exact_match("Denver Broncos", "Broncos") == 0.0


def test_token_f1_partial_and_empty_rules():
    # gold {denver, broncos}, pred {denver, broncos, win}: precision 2/3, recall 1 -> F1 0.8
    assert token_f1("Denver Broncos", "the Denver Broncos win") == pytest.approx(0.8)
    assert token_f1("a b c d", "c d e") == pytest.approx(2 / 3)  # gold {b, c, d} once "a" is dropped: P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)  # bags: min counts x1 y1
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0 and token_f1("cat", "") == 0.0
    assert token_f1("cat", "dog") == 0.0


def ex(id, answers, impossible=False):
    return SimpleNamespace(id=id, answers=tuple((a, 0) for a in answers), is_impossible=impossible)


def test_squad_scores_v1_max_over_gold_and_missing_prediction():
    examples = [ex("q1", ["Denver Broncos", "Broncos"]), ex("q2", ["Denver Broncos"]), ex("q3", ["x"])]
    scores = squad_scores({"q1": "Broncos", "q2": "the Denver Broncos win"}, examples)
    assert scores == {"exact": pytest.approx(100 / 3), "f1": pytest.approx(100 * 1.8 / 3)}


def test_squad_scores_v2_splits():
    examples = [ex("a", ["Paris"]), ex("b", ["Rome", "Roma"]), ex("c", [], True), ex("d", [], True)]
    scores = squad_scores({"a": "Paris", "b": "", "c": "", "d": "Lyon"}, examples)
    assert scores == pytest.approx({"exact": 50.0, "f1": 50.0, "HasAns_exact": 50.0, "HasAns_f1": 50.0,
                                    "NoAns_exact": 50.0, "NoAns_f1": 50.0})
    assert set(squad_scores({}, examples[:2], v2=True)) == {"exact", "f1", "HasAns_exact", "HasAns_f1"}
