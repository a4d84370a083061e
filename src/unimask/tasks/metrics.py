"""Official fine-tuning metrics, in percent.

GLUE metrics are thin wrappers over scikit-learn / scipy, called as (labels, predictions) like
scikit-learn. SQuAD EM/F1 follow the official v1.1/v2.0 evaluation scripts (Rajpurkar et al. 2016,
2018): answers are normalised (lower-case, no punctuation, no articles, single spaces), a prediction
scores the maximum over the gold answers, and an unanswerable question's only gold answer is "".
Generation is scored with well-kept packages: corpus BLEU-4 (sacrebleu), ROUGE-L (rouge-score) and,
when nltk's WordNet data is installed, METEOR (nltk).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

ArrayLike = Any  # a list, numpy array or CPU tensor of numbers


def accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Percentage of predictions equal to their label (SST-2, MNLI, QNLI, RTE, WNLI, MRPC, QQP)."""
    return 100.0 * float(skm.accuracy_score(np.asarray(labels), np.asarray(predictions)))


def f1(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Binary F1 of the positive class 1 (MRPC, QQP)."""
    return 100.0 * float(skm.f1_score(np.asarray(labels), np.asarray(predictions), zero_division=0.0))


def matthews(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Matthews correlation (CoLA); 0 when either side is constant."""
    return 100.0 * float(skm.matthews_corrcoef(np.asarray(labels), np.asarray(predictions)))


def pearson(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Pearson correlation (STS-B); 0 instead of NaN when either side is constant."""
    return _correlation(stats.pearsonr, labels, predictions)


def spearman(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Spearman rank correlation (STS-B); 0 instead of NaN when either side is constant."""
    return _correlation(stats.spearmanr, labels, predictions)


def _correlation(fn, labels: ArrayLike, predictions: ArrayLike) -> float:
    x, y = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # undefined; 0 keeps best-epoch selection working
        return 0.0
    return 100.0 * float(fn(x, y)[0])


# ---------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, prediction: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Bag-of-tokens F1 of the normalised strings; v2.0 rule: both empty -> 1, one empty -> 0."""
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], examples: Iterable[Any],
                 v2: bool | None = None) -> dict[str, float]:
    """{"exact", "f1"} in percent over `examples` (objects with .id, .answers [(text, start)] and
    .is_impossible); for v2.0 also "HasAns_*" and "NoAns_*" for the subsets that are present.

    A question without a prediction scores 0. `v2=None`: v2.0 when any example is impossible.
    """
    examples = list(examples)
    if v2 is None:
        v2 = any(ex.is_impossible for ex in examples)
    exact: dict[str, list[float]] = {"all": [], "HasAns": [], "NoAns": []}
    f1s: dict[str, list[float]] = {"all": [], "HasAns": [], "NoAns": []}
    for ex in examples:
        golds = [text for text, _ in ex.answers if normalize_answer(text)] or [""]
        pred = predictions.get(ex.id)
        em = 0.0 if pred is None else max(exact_match(g, pred) for g in golds)
        f = 0.0 if pred is None else max(token_f1(g, pred) for g in golds)
        subset = "HasAns" if ex.answers else "NoAns"  # as the official script: by the raw answers
        for key in ("all", subset):
            exact[key].append(em)
            f1s[key].append(f)
    out = {"exact": _percent(exact["all"]), "f1": _percent(f1s["all"])}
    if v2:
        for key in ("HasAns", "NoAns"):
            if exact[key]:
                out[f"{key}_exact"], out[f"{key}_f1"] = _percent(exact[key]), _percent(f1s[key])
    return out


def _percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------- generation (BLEU-4, ROUGE-L, METEOR)

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def generation_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, each its own token ("levi's" -> levi ' s): question
    generation papers (Du et al. 2017; UniLM, Dong et al. 2019) score lower-cased tokenized text, and
    one tokenization for both sides keeps the score independent of how the WordPiece decoder joins."""
    return _WORDS.findall(text.lower())


def bleu4(references: list[str], predictions: list[str]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) with sacrebleu on `generation_tokens` (its own tokenizer
    off, no smoothing, one reference per prediction): n-gram matches and lengths are summed over the
    corpus before the geometric mean and the brevity penalty, as multi-bleu.perl and the coco-caption
    scorer of the QG papers do (nltk's corpus_bleu counts a too-short hypothesis as one n-gram)."""
    from sacrebleu.metrics import BLEU
    if not predictions:
        return 0.0
    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
    return float(bleu.corpus_score([" ".join(generation_tokens(p)) for p in predictions],
                                   [[" ".join(generation_tokens(r)) for r in references]]).score)


def rouge_l(references: list[str], predictions: list[str]) -> float:
    """Mean sentence-level ROUGE-L F1 (Lin 2004) of Google's `rouge-score` package with its own
    tokenizer (lower-cased, alphanumeric tokens only)."""
    from rouge_score import rouge_scorer
    if not predictions:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return 100.0 * float(np.mean([scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]))


def meteor_unavailable() -> str | None:
    """Why METEOR cannot be computed here (nltk's METEOR needs its WordNet data, which is not a pip
    dependency and cannot be downloaded at run time), or None when it can."""
    try:
        from nltk.corpus import wordnet
        wordnet.synsets("question")
    except ImportError:
        return "nltk is not installed"
    except LookupError:
        return "nltk's WordNet data is not installed (python -m nltk.downloader wordnet), so METEOR is skipped"
    return None


def meteor(references: list[str], predictions: list[str]) -> float:
    """Mean sentence METEOR (Banerjee and Lavie 2005; nltk's implementation with WordNet synonyms) on
    `generation_tokens`. nltk's METEOR differs from the Java METEOR 1.5 of the QG papers by a few points."""
    from nltk.translate.meteor_score import meteor_score
    if not predictions:
        return 0.0
    return 100.0 * float(np.mean([meteor_score([generation_tokens(r)], generation_tokens(p))
                                  for r, p in zip(references, predictions)]))


def generation_scores(references: list[str], predictions: list[str]) -> dict[str, float]:
    """{"bleu4", "rougeL"} and "meteor" when WordNet is available (see `meteor_unavailable`), in percent."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scores = {"bleu4": bleu4(references, predictions), "rougeL": rouge_l(references, predictions)}
    if meteor_unavailable() is None:
        scores["meteor"] = meteor(references, predictions)
    return scores
