"""UniLM-style seq2seq fine-tuning and generation: the pseudo-mask layout against its rules, target
masking and loss positions, gradients, cached == recomputed == brute-force decoding, beam search on
toy distributions, the scorers, and `unimask finetune --task seq2seq` + `unimask generate` end to end."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from conftest import shared_data, tiny_run_config
from unimask.cli import main
from unimask.errors import UserError
from unimask.model.encoder import Encoder, EncoderConfig
from unimask.tasks import metrics
from unimask.tasks.base import SpecialIds, collate
from unimask.tasks.decoding import (CachedDecoder, GenerationConfig, RecomputingDecoder, Seq2SeqIds, _blocked,
                                    beam_search, generate)
from unimask.tasks.seq2seq import (Seq2SeqExample, Seq2SeqTask, corrupt_targets, read_jsonl, read_pairs,
                                   s2s_inputs, s2s_layout, tied_head)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "the a lord said unto moses and who what where did go up land of egypt ? people with all".split()
PAD, CLS, SEP, MASK = 0, 2, 3, 4
V = len(SPECIALS) + len(WORDS)


def word_tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(SPECIALS + WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def tiny_model(positions: str = "both", seed: int = 0) -> tuple[Encoder, torch.nn.Module]:
    kw = {"absolute": dict(absolute_positions=True, relative_buckets=0),
          "relative": dict(absolute_positions=False, relative_buckets=16),
          "both": dict(absolute_positions=True, relative_buckets=16)}[positions]
    torch.manual_seed(seed)
    enc = Encoder(EncoderConfig(vocab_size=V, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                max_positions=64, dropout=0.0, attention_dropout=0.0, relative_max_distance=16, **kw))
    head = tied_head(enc)
    with torch.no_grad():   # BERT's N(0, 0.02) barely mixes tokens: unit-scale weights make context matter
        for name, p in [*enc.named_parameters(), *head.named_parameters()]:
            if p.dim() == 2:
                p.normal_(0, 1.0 if "embeddings" in name or "table" in name else p.shape[1] ** -0.5)
    return enc.eval(), head.eval()


def random_pairs(n: int, seed: int = 0) -> list[Seq2SeqExample]:
    g = torch.Generator().manual_seed(seed)
    def text(lo, hi):
        k = int(torch.randint(lo, hi, (1,), generator=g))
        return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g).tolist())
    return [Seq2SeqExample(text(1, 9), text(1, 6)) for _ in range(n)]


# ---- layout ------------------------------------------------------------------------------------------

def brute_force_layout(ls: int, lt: int, S: int, T: int):
    """The s2s-ft rules, one (query, key) pair at a time, for one row."""
    L = S + 2 * T
    def part(i):
        return ("src", i, i < ls) if i < S else (("tgt", i - S, i - S < lt) if i < S + T else ("pseudo", i - S - T, i - S - T < lt))
    mask = torch.zeros(L, L, dtype=torch.bool)
    for q, k in itertools.product(range(L), range(L)):
        (qk, qi, qreal), (kk, ki, kreal) = part(q), part(k)
        if not qreal:
            ok = q == k                                              # padding: itself only
        elif not kreal:
            ok = False
        elif qk == "src":
            ok = kk == "src"
        elif qk == "tgt":
            ok = kk == "src" or (kk == "tgt" and ki <= qi)
        else:
            ok = kk == "src" or (kk == "tgt" and ki < qi) or (kk == "pseudo" and ki == qi)
        mask[q, k] = ok
    positions = [part(i)[1] if i < S else ls + part(i)[1] for i in range(L)]
    types = [0 if i < S else 1 for i in range(L)]
    return torch.tensor(positions), torch.tensor(types), mask


def test_layout_matches_the_rules():
    ls, lt, S, T = torch.tensor([5, 3, 2]), torch.tensor([2, 4, 1]), 5, 4
    positions, types, mask = s2s_layout(ls, lt, S, T)
    assert mask.shape == (3, S + 2 * T, S + 2 * T)
    for b in range(3):
        p, t, m = brute_force_layout(int(ls[b]), int(lt[b]), S, T)
        assert torch.equal(mask[b], m), b
        assert torch.equal(positions[b], p) and torch.equal(types[b], t)
    # the pseudo token of target i has target i's position id
    assert torch.equal(positions[:, S:S + T], positions[:, S + T:])
    target = torch.tensor([[7, 8, 0, 0], [7, 8, 9, 10], [7, 0, 0, 0]])
    masked = torch.tensor([[True, False, False, False], [False, True, True, False], [False] * 4])
    ids = s2s_inputs(torch.full((3, S), 5), target, lt, masked, MASK, PAD)
    assert ids[1, S:].tolist() == [7, MASK, MASK, 10, MASK, MASK, MASK, MASK]
    assert ids[2, S:].tolist() == [7, 0, 0, 0, MASK, PAD, PAD, PAD]
    substitute = torch.tensor([[7, 3, 9, 9], [MASK, 8, 2, MASK], [MASK] * 4])   # per-token substitutes
    ids = s2s_inputs(torch.full((3, S), 5), target, lt, masked, substitute, PAD)
    assert ids[0, S:].tolist() == [7, 8, 0, 0, 7, 3, PAD, PAD]
    assert ids[1, S:].tolist() == [7, 8, 2, 10, MASK, 8, 2, MASK]


def test_target_corruption_follows_s2s_ft():
    """s2s-ft "v2": every target's substitute is itself 10% / random 10% / [MASK] 80%; with
    target_mask_prob it also replaces the target in the true stream; padding is never touched."""
    lengths = torch.randint(1, 30, (400,), generator=torch.Generator().manual_seed(0))
    target = torch.randint(10, 1000, (400, 30), generator=torch.Generator().manual_seed(3))
    real = torch.arange(30)[None] < lengths[:, None]
    n = real.sum().item()
    for prob in (0.4, 0.7):
        replaced, sub = corrupt_targets(target, lengths, prob, 0.1, 0.1, MASK, 1000, torch.Generator().manual_seed(1))
        assert not (replaced & ~real).any()
        assert abs(replaced.sum().item() / n - prob) < 0.02
        assert abs((sub == MASK)[real].float().mean().item() - 0.8) < 0.02
        assert abs((sub == target)[real].float().mean().item() - 0.1) < 0.02
    a = corrupt_targets(target, lengths, 0.5, 0.1, 0.1, MASK, 1000, torch.Generator().manual_seed(2))
    b = corrupt_targets(target, lengths, 0.5, 0.1, 0.1, MASK, 1000, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _task_batch(n: int = 6, seed: int = 0, **kw):
    task = Seq2SeqTask(target_mask_prob=0.5, max_target_length=8, **kw)
    tok = word_tokenizer()
    features = task.featurize(random_pairs(n, seed), tok, SpecialIds.of(tok), max_length=24)
    return task, collate(features, PAD), features


def test_features_cut_source_and_target_and_add_specials():
    task = Seq2SeqTask(max_target_length=4)
    tok = word_tokenizer()
    [f] = task.featurize([Seq2SeqExample("the lord said unto moses and the people", "who did go up land")], tok,
                         SpecialIds.of(tok), max_length=10)
    assert task.max_source_length == 6
    assert f["input_ids"] == [CLS] + tok.encode("the lord said unto", add_special_tokens=False).ids + [SEP]
    assert f["target_ids"] == tok.encode("who did go", add_special_tokens=False).ids + [SEP]
    assert f["target_length"] == 4
    assert task.options()["max_target_length"] == 4


def test_loss_is_read_exactly_at_the_pseudo_tokens_of_all_targets():
    enc, head = tiny_model()
    enc.train()
    task, batch, _ = _task_batch()
    special = SpecialIds.of(word_tokenizer())
    inputs = task.inputs(batch, special, enc.config, torch.Generator().manual_seed(0))    # training: corrupted
    hidden = task.encode(enc, inputs).detach().requires_grad_(True)   # (B, S + 2T, D)
    replaced, predicted, target = inputs["replaced"], inputs["predicted"], inputs["targets"]
    B, T = predicted.shape
    S = batch["input_ids"].shape[1]
    assert hidden.shape[1] == S + 2 * T
    lt = batch["target_length"]
    real = torch.arange(T)[None] < lt[:, None]
    assert torch.equal(predicted, real) and replaced.any() and not (replaced & ~real).any()
    loss, count = task.loss(head, hidden, inputs)
    assert count == real.sum()
    loss.backward()
    touched = hidden.grad.abs().sum(-1) > 0                          # (B, L) positions the loss read
    expected = torch.zeros_like(touched)
    expected[:, S + T:] = real
    assert torch.equal(touched, expected)
    # the value: summed cross-entropy of the head at those positions
    manual = sum(F.cross_entropy(head(hidden[b, S + T + i][None]), target[b, i][None], reduction="sum")
                 for b, i in real.nonzero().tolist())
    torch.testing.assert_close(loss, manual)
    # evaluation (no generator) feeds the clean targets and [MASK] pseudo tokens
    clean = task.inputs(batch, special, enc.config)
    assert not clean["replaced"].any() and (clean["input_ids"][:, S + T:][real] == MASK).all()


def test_training_masks_come_from_the_callers_generator_and_evaluation_is_fixed():
    """No hidden state: the same generator state gives the same corruption, whatever was drawn before."""
    enc, _ = tiny_model()
    task, batch, _ = _task_batch(n=8)
    special = SpecialIds.of(word_tokenizer())
    rng = torch.Generator().manual_seed(5)
    draws = [task.inputs(batch, special, enc.config, rng)["replaced"] for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])                        # a fresh draw per step
    rng = torch.Generator().manual_seed(5)
    again = [task.inputs(batch, special, enc.config, rng)["replaced"] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(draws, again))       # same seed -> same sequence of masks
    torch.manual_seed(123)                                            # torch's global seed plays no part
    state = torch.get_rng_state()
    e1, e2 = task.inputs(batch, special, enc.config), task.inputs(batch, special, enc.config)
    assert all(torch.equal(e1[k], e2[k]) for k in e1) and torch.equal(torch.get_rng_state(), state)


def test_every_parameter_gets_a_gradient():
    enc, head = tiny_model("both")
    enc.train(), head.train()
    task, batch, _ = _task_batch(n=8)
    inputs = task.inputs(batch, SpecialIds.of(word_tokenizer()), enc.config, torch.Generator().manual_seed(0))
    loss, count = task.loss(head, task.encode(enc, inputs), inputs)
    (loss / count).backward()
    params = {f"encoder.{n}": p for n, p in enc.named_parameters()} | {f"head.{n}": p for n, p in head.named_parameters()}
    missing = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert set(dict(head.named_parameters())) == {"dense.weight", "dense.bias", "norm.weight", "norm.bias", "bias"}
    assert not any(isinstance(m, Encoder) for m in head.modules())   # tied, not a submodule
    assert (enc.embeddings.token_type.weight.grad.abs().sum(-1) > 0).all()


# ---- decoding ----------------------------------------------------------------------------------------

def brute_force_greedy(enc, head, source: list[int], max_length: int, banned=(PAD, CLS, MASK)) -> list[int]:
    """Greedy decoding by running the full training layout (no masking) for every step."""
    out: list[int] = []
    S = len(source)
    while len(out) <= max_length:
        t = len(out)
        target = torch.tensor([out + [SEP]])                                # y(0..t-1) and a placeholder at t
        lt = torch.tensor([t + 1])
        positions, types, mask = s2s_layout(torch.tensor([S]), lt, S, t + 1)
        ids = s2s_inputs(torch.tensor([source]), target, lt, torch.zeros(1, t + 1, dtype=torch.bool), MASK, PAD)
        hidden = enc(ids, position_ids=positions, token_type_ids=types, attention_mask=mask)
        logits = head(hidden[0, S + (t + 1) + t][None])[0]                # the pseudo token of position t
        logits[list(banned)] = -math.inf
        if t == max_length:
            break
        token = int(logits.argmax())
        if token == SEP:
            break
        out.append(token)
    return out


SOURCES = [[CLS, 5, 9, 12, 7, 6, SEP], [CLS, 8, SEP], [CLS, 11, 11, 20, SEP], [CLS, 6, 7, 8, 9, 10, 13, 14, 15, SEP]]


@pytest.mark.parametrize("positions,seed", itertools.product(["absolute", "relative", "both"], [1, 2]))
def test_cached_equals_recomputed_equals_brute_force(positions, seed):
    enc, head = tiny_model(positions, seed=seed)
    ids = Seq2SeqIds(mask=MASK, sep=SEP)
    greedy = GenerationConfig(beam_size=1, blocked_ngram_size=0, min_length=0)
    cached = generate(enc, head, SOURCES, ids, greedy, max_length=7, batch_size=3, banned=(PAD, CLS, MASK))
    recomputed = generate(enc, head, SOURCES, ids, GenerationConfig(**{**greedy.__dict__, "kv_cache": False}),
                          max_length=7, batch_size=3, banned=(PAD, CLS, MASK))
    reference = [brute_force_greedy(enc, head, s, 7) for s in SOURCES]
    assert cached == recomputed == reference
    assert any(len(r) > 2 for r in reference)
    # the step distributions agree too, with padding in the batch
    src = torch.full((len(SOURCES), 10), PAD)
    for i, s in enumerate(SOURCES):
        src[i, :len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in SOURCES])
    a, b = CachedDecoder(enc, head, src, lengths, ids), RecomputingDecoder(enc, head, src, lengths, ids)
    tokens = None
    for step in range(4):
        la, lb = a.step(tokens), b.step(tokens)
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
        tokens = torch.tensor([5 + step, 9, 10 + step, 6])
    beam = GenerationConfig(beam_size=3, blocked_ngram_size=2, min_length=2)
    assert (generate(enc, head, SOURCES, ids, beam, max_length=6, batch_size=2)
            == generate(enc, head, SOURCES, ids, GenerationConfig(**{**beam.__dict__, "kv_cache": False}),
                        max_length=6, batch_size=4))


class ToyState:
    """Next-token log-probabilities that depend on the whole prefix through a seeded draw, or a table."""

    def __init__(self, n: int, vocab: int, fn=None, seed: int = 0) -> None:
        self.prefixes: list[tuple[int, ...]] = [()] * n
        self.vocab, self.fn, self.seed = vocab, fn, seed

    def _lp(self, prefix: tuple[int, ...]) -> torch.Tensor:
        if self.fn is not None:
            return self.fn(prefix)
        g = torch.Generator().manual_seed(hash((self.seed, prefix)) % 2**31)
        return F.log_softmax(2 * torch.randn(self.vocab, generator=g), -1)

    def step(self, tokens):
        if tokens is not None:
            self.prefixes = [p + (int(t),) for p, t in zip(self.prefixes, tokens.tolist())]
        return torch.stack([self._lp(p) for p in self.prefixes])

    def reorder(self, rows):
        self.prefixes = [self.prefixes[i] for i in rows.tolist()]


def exhaustive_best(state: ToyState, eos: int, max_length: int, alpha: float) -> tuple[list[int], float]:
    best = ([], -math.inf)
    for n in range(max_length + 1):
        for seq in itertools.product([t for t in range(state.vocab) if t != eos], repeat=n):
            lp = sum(float(state._lp(seq[:i])[seq[i]]) for i in range(n)) + float(state._lp(seq)[eos])
            score = lp / (n + 1) ** alpha
            if score > best[1]:
                best = (list(seq), score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_search_returns_the_best_hypothesis(alpha):
    eos, L = 0, 3
    for seed in range(3):
        truth = exhaustive_best(ToyState(1, 4, seed=seed), eos, L, alpha)
        cfg = GenerationConfig(beam_size=64, length_penalty=alpha, blocked_ngram_size=0, min_length=0)
        [(tokens, score)] = beam_search(ToyState(1, 4, seed=seed), 1, cfg, eos, L)
        assert tokens == truth[0] and score == pytest.approx(truth[1], abs=1e-5)
    # several sources at once give each its own answer
    cfg = GenerationConfig(beam_size=2, length_penalty=alpha, blocked_ngram_size=0, min_length=0)
    together = beam_search(ToyState(3, 5, seed=7), 3, cfg, eos, 4)
    assert len({tuple(t) for t, _ in together}) == 1                   # same toy for all rows
    assert together[0] == beam_search(ToyState(1, 5, seed=7), 1, cfg, eos, 4)[0]


def test_beam_beats_greedy_on_a_garden_path():
    """Greedy takes 1 (p=.6) then faces a flat distribution; 2 (p=.4) leads to a sure end."""
    def fn(prefix):
        table = {(): [0.0, 0.6, 0.4], (1,): [0.34, 0.33, 0.33], (2,): [0.98, 0.01, 0.01]}
        p = torch.tensor(table.get(prefix, [0.98, 0.01, 0.01]))
        return p.log()
    greedy = GenerationConfig(beam_size=1, length_penalty=0.0, blocked_ngram_size=0, min_length=0)
    beam = GenerationConfig(beam_size=2, length_penalty=0.0, blocked_ngram_size=0, min_length=0)
    assert beam_search(ToyState(1, 3, fn), 1, greedy, 0, 5)[0][0] == [1]
    assert beam_search(ToyState(1, 3, fn), 1, beam, 0, 5)[0][0] == [2]


def test_blocked_ngrams_and_length_limits():
    repeat = lambda prefix: F.log_softmax(torch.tensor([-5.0, 3.0, 2.0, 1.0, 0.0]), -1)   # loves token 1, hates [SEP]
    for n in (1, 2, 3):
        cfg = GenerationConfig(beam_size=2, blocked_ngram_size=n, min_length=0)
        [(tokens, _)] = beam_search(ToyState(1, 5, repeat), 1, cfg, 0, 8)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        assert len(grams) == len(set(grams)), (n, tokens)
    [(tokens, _)] = beam_search(ToyState(1, 5, repeat), 1, GenerationConfig(beam_size=3, blocked_ngram_size=0), 0, 6)
    assert tokens == [1] * 6                                          # [SEP] forced at max_length
    stop = lambda prefix: F.log_softmax(torch.tensor([5.0, 1.0, 0.5, 0.0, 0.0]), -1)    # wants to stop at once
    for k in (1, 3):
        [(tokens, _)] = beam_search(ToyState(1, 5, stop), 1, GenerationConfig(beam_size=k, min_length=3,
                                                                             blocked_ngram_size=0), 0, 6)
        assert len(tokens) == 3
    [(tokens, _)] = beam_search(ToyState(1, 5, stop), 1, GenerationConfig(beam_size=2, min_length=0), 0, 6)
    assert tokens == []
    [(tokens, _)] = beam_search(ToyState(1, 5, repeat), 1, GenerationConfig(beam_size=2, blocked_ngram_size=0),
                                0, 6, banned=[1])
    assert 1 not in tokens
    assert _blocked([1, 2, 3, 1, 2], 3) == [3] and _blocked([1, 2, 3], 2) == [] and _blocked([4, 4], 1) == [4]
    with pytest.raises(UserError):
        GenerationConfig(min_length=5, max_length=3)


# ---- scorers -----------------------------------------------------------------------------------------

def test_bleu4_against_hand_computation():
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths (no brevity penalty)
    assert metrics.bleu4(["the cat sat on a mat"], ["The cat sat on the mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # corpus level: counts are summed before the mean; hypothesis 9 tokens vs reference 10 -> BP = e^(1 - 10/9)
    refs, hyps = ["the cat sat on a mat", "a b c d"], ["the cat sat on the mat", "a b c"]
    p = [(5 + 3) / 9, (3 + 2) / 7, (2 + 1) / 5, (1 + 0) / 3]
    expected = math.exp(1 - 10 / 9) * math.exp(sum(math.log(x) for x in p) / 4)
    assert metrics.bleu4(refs, hyps) == pytest.approx(100 * expected)
    assert metrics.bleu4(["levi 's stadium in santa clara ?"], ["Levi's stadium in Santa Clara?"]) == pytest.approx(100)
    assert metrics.generation_tokens("Levi's stadium?") == ["levi", "'", "s", "stadium", "?"]
    assert metrics.bleu4(["a b c d"], ["x y"]) == 0.0


def test_rouge_l_against_hand_computation():
    # LCS("the cat sat on a mat", "the cat sat on the mat") = 5 tokens: P = R = F = 5/6
    assert metrics.rouge_l(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(500 / 6)
    # LCS = 2 ("a c"): P = 2/2, R = 2/4, F = 2PR/(P+R) = 2/3; mean with a perfect match
    assert metrics.rouge_l(["a b c d", "x"], ["a c", "x"]) == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_meteor_is_reported_only_when_wordnet_is_there(monkeypatch):
    reason = metrics.meteor_unavailable()
    scores = metrics.generation_scores(["the cat sat"], ["the cat sat"])
    assert ("meteor" in scores) == (reason is None)
    monkeypatch.setattr(metrics, "meteor_unavailable", lambda: "no WordNet")
    assert set(metrics.generation_scores(["a"], ["a"])) == {"bleu4", "rougeL"}
    if reason is None:
        # one 3-token chunk: fragmentation penalty 0.5 * (1/3) ** 3; F-mean of P = R = 1 is 1
        assert metrics.meteor(["the cat sat"], ["the cat sat"]) == pytest.approx(100 * (1 - 0.5 / 27), abs=1e-3)


# ---- files and errors --------------------------------------------------------------------------------

def test_readers_and_their_errors(tmp_path: Path):
    (tmp_path / "s.txt").write_text("a b\nc d\n")
    (tmp_path / "t.txt").write_text("x\ny\n")
    assert read_pairs(tmp_path / "s.txt", tmp_path / "t.txt") == [Seq2SeqExample("a b", "x"), Seq2SeqExample("c d", "y")]
    (tmp_path / "d.jsonl").write_text('{"src": "a b", "tgt": "x"}\n\n{"src": "c", "tgt": "y"}\n')
    assert [e.target for e in read_jsonl(tmp_path / "d.jsonl")] == ["x", "y"]
    (tmp_path / "short.txt").write_text("x\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('{"src": "a"}\n')
    (tmp_path / "notjson.jsonl").write_text('src: a\n')
    cases = [((tmp_path / "s.txt", tmp_path / "short.txt"), "line-aligned"),
             ((tmp_path / "nope.txt", tmp_path / "t.txt"), "does not exist"),
             ((tmp_path / "empty.txt", tmp_path / "t.txt"), "empty"),
             ((tmp_path / "bad.jsonl",), "tgt"),
             ((tmp_path / "notjson.jsonl",), "not JSON")]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            (read_pairs(*args) if len(args) == 2 else read_jsonl(*args))
    with pytest.raises(UserError, match="target_mask_prob"):
        Seq2SeqTask(target_mask_prob=1.5)
    with pytest.raises(UserError, match="pseudo_keep_prob"):
        Seq2SeqTask(pseudo_keep_prob=0.6, pseudo_random_prob=0.6)
    with pytest.raises(UserError, match="no seq2seq dev"):
        Seq2SeqTask(train=tmp_path / "d.jsonl").examples("dev")
    with pytest.raises(UserError, match="source tokens"):
        Seq2SeqTask(max_target_length=40).featurize([], word_tokenizer(), SpecialIds.of(word_tokenizer()), 32)


def test_cli_errors(tmp_path: Path, capsys):
    (tmp_path / "d.jsonl").write_text('{"src": "a", "tgt": "b"}\n')
    base = ["finetune", "--checkpoint", str(tmp_path), "--task", "seq2seq"]
    assert main(base + ["--dev", str(tmp_path / "d.jsonl")]) == 2
    assert "--train FILE.jsonl" in capsys.readouterr().err
    assert main(base + ["--train-src", "x", "--dev", str(tmp_path / "d.jsonl")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--input", str(tmp_path / "d.jsonl")]) == 2
    assert "finetune.json" in capsys.readouterr().err


# ---- end to end --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(kjv_data, tmp_path_factory) -> Path:
    """A 2-step tiny MLM run with one checkpoint (its tied LM head starts the seq2seq head)."""
    from unimask.train.loop import train
    run = tmp_path_factory.mktemp("s2s") / "mlm"
    train(tiny_run_config(kjv_data, steps=2, save_every=2), run, progress=False)
    return run


@pytest.mark.slow
def test_finetune_then_generate_on_question_generation(checkpoint: Path, tmp_path: Path, capsys, monkeypatch):
    src, tgt = shared_data("qg", "src-dev.txt"), shared_data("qg", "tgt-dev.txt")
    lines = {name: path.read_text().splitlines() for name, path in (("src", src), ("tgt", tgt))}
    for split, part in (("train", slice(0, 64)), ("dev", slice(64, 72)), ("test", slice(72, 76))):
        for side in ("src", "tgt"):
            (tmp_path / f"{side}-{split}.txt").write_text("\n".join(lines[side][part]) + "\n")
    out = tmp_path / "ft"
    code = main(["finetune", "--checkpoint", str(checkpoint), "--task", "seq2seq",
                 "--train-src", str(tmp_path / "src-train.txt"), "--train-tgt", str(tmp_path / "tgt-train.txt"),
                 "--dev-src", str(tmp_path / "src-dev.txt"), "--dev-tgt", str(tmp_path / "tgt-dev.txt"),
                 "--out", str(out), "--epochs", "2", "--batch-size", "16", "--lr", "2e-3", "--max-length", "64",
                 "--max-target-length", "16", "--beam", "2", "--precision", "fp32", "--device", "cpu", "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    [run] = results["runs"]
    assert len(run["history"]) == 2 and run["history"][-1]["train_loss"] < run["history"][0]["train_loss"] + 1.0
    assert {"bleu4", "rougeL"} <= set(results["summary"]["dev"])
    meta = json.loads((out / "best" / "finetune.json").read_text())
    assert meta["task"] == "seq2seq" and meta["task_options"]["max_source_length"] == 48
    assert meta["task_options"]["generation"]["beam_size"] == 2
    capsys.readouterr()

    outputs = {}
    for flag in ([], ["--no-cache"]):
        path = tmp_path / f"out{len(flag)}.txt"
        code = main(["generate", "--checkpoint", str(out), "--input", str(tmp_path / "src-test.txt"),
                     "--output", str(path), "--references", str(tmp_path / "tgt-test.txt"), "--batch-size", "3",
                     "--device", "cpu", *flag])
        assert code == 0
        err = capsys.readouterr().err
        assert "sentences/s" in err and "bleu4" in err and "rougeL" in err
        outputs[bool(flag)] = path.read_text().splitlines()
    assert len(outputs[False]) == 4 and outputs[False] == outputs[True]
    # `unimask predict` on a seq2seq model is `unimask generate`
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "src-test.txt"), "--output",
                 str(tmp_path / "predicted.txt"), "--device", "cpu", "--batch-size", "3"]) == 0
    assert (tmp_path / "predicted.txt").read_text().splitlines() == outputs[False]
    capsys.readouterr()
    assert main(["export", str(out), "--out", str(tmp_path / "hf")]) == 2      # no transformers class decodes it
    assert "pseudo-mask layout" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    # a JSONL input carries its own references; a misaligned reference file is an error
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in
                                              zip(lines["src"][72:74], lines["tgt"][72:74])))
    assert main(["generate", "--checkpoint", str(out / "best"), "--input", str(tmp_path / "in.jsonl"),
                 "--beam", "1", "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "bleu4" in captured.err
    assert all(len(line.split()) <= 5 for line in captured.out.splitlines())
    # the old name of --max-new-tokens still works, with a warning; `--input -` reads standard input
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines["src"][72:74])))
    assert main(["generate", "--checkpoint", str(out / "best"), "--input", "-", "--beam", "1", "--max-length", "2"]) == 0
    captured = capsys.readouterr()
    assert "--max-length is deprecated and will go; use --max-new-tokens" in captured.err
    assert len(captured.out.splitlines()) == 2 and all(len(line.split()) <= 2 for line in captured.out.splitlines())
    assert main(["generate", "--checkpoint", str(out), "--input", str(tmp_path / "src-test.txt"),
                 "--references", str(tmp_path / "tgt-dev.txt")]) == 2
    assert "line-aligned" in capsys.readouterr().err


def test_lengths_past_the_positions_are_refused_before_the_output_exists(checkpoint: Path, tmp_path: Path, capsys):
    """Issue 15: source + target beyond the model's positions (64 here) is an error before --out is made."""
    (tmp_path / "d.jsonl").write_text('{"src": "a b", "tgt": "c"}\n')
    out = tmp_path / "ft"
    code = main(["finetune", "--checkpoint", str(checkpoint), "--task", "seq2seq", "--train", str(tmp_path / "d.jsonl"),
                 "--dev", str(tmp_path / "d.jsonl"), "--out", str(out), "--max-length", "64",
                 "--max-source-length", "48", "--max-target-length", "24", "--quiet"])
    assert code == 2
    assert "source (48) plus target (24) tokens exceed the model's 64 positions" in capsys.readouterr().err
    assert not out.exists()
