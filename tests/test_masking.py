"""Corruption invariants: exact budgets, never special tokens, 15% and 80/10/10 over many draws,
whole words, spans, determinism, and MLM's sparse head against a full-vocabulary reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unimask.model.encoder import Encoder, EncoderConfig
from unimask.objectives import TokenBatch, Vocab
from unimask.objectives import masking
from unimask.objectives.mlm import MLM, MLMConfig

V = 100
VOCAB = Vocab(size=V)                 # pad 0, unk 1, cls 2, sep 3, mask 4
SPECIAL = torch.tensor(VOCAB.special_ids)


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch_ids(B: int, T: int, seed: int = 0, pad_from: list[int] | None = None) -> torch.Tensor:
    """[CLS] ordinary tokens [SEP] [PAD]...; row b is padded from pad_from[b] on, with a stray [UNK]."""
    x = torch.randint(5, V, (B, T), generator=rng(seed))
    x[:, 0] = VOCAB.cls
    x[:, T // 2] = VOCAB.unk
    for b, start in enumerate(pad_from or [T] * B):
        x[b, start - 1] = VOCAB.sep
        x[b, start:] = VOCAB.pad
    return x


def candidates_of(x: torch.Tensor) -> torch.Tensor:
    return ~torch.isin(x, SPECIAL)


def test_candidate_mask_excludes_specials():
    x = batch_ids(2, 10, pad_from=[10, 6])
    c = masking.candidate_mask(x, VOCAB.special_ids)
    assert torch.equal(c, (x >= 5))


def test_token_mask_exact_budget_and_never_special():
    lengths = [64, 40, 23, 9, 3]                               # candidates per row vary with padding
    x = batch_ids(5, 64, pad_from=lengths)
    cand = candidates_of(x)
    for seed in range(20):
        m = masking.token_mask(cand, 0.15, rng(seed))
        assert not (m & ~cand).any()
        for row, n in zip(m, cand.sum(-1).tolist()):
            k = int(row.sum())
            assert abs(k - 0.15 * n) <= 0.5 or (k == 1 and 0.15 * n < 0.5)   # round(0.15 n), at least 1
    # a row with nothing maskable masks nothing
    none = torch.zeros(1, 8, dtype=torch.bool)
    assert not masking.token_mask(none, 0.15, rng(0)).any()


def test_token_mask_is_uniform_over_candidates():
    cand = torch.ones(1, 20, dtype=torch.bool).expand(4000, 20).contiguous()
    m = masking.token_mask(cand, 0.15, rng(0))                 # 3 of 20 per row
    assert (m.sum(-1) == 3).all()
    freq = m.float().mean(0)                                   # each position: 0.15 expected
    assert (freq - 0.15).abs().max() < 0.02


def test_mask_fraction_and_80_10_10_over_many_draws():
    B, T = 800, 256                                            # ~200k positions
    x = batch_ids(B, T, seed=1)
    cand = candidates_of(x)
    m = masking.token_mask(cand, 0.15, rng(1))
    frac = m.sum().item() / cand.sum().item()
    assert abs(frac - 0.15) < 0.001                            # exact per row, so the total is ~exact too
    out = masking.apply_bert_replacement(x, m, VOCAB.mask, V, rng(2))
    assert torch.equal(out[~m], x[~m])                         # unmasked positions untouched
    n = m.sum().item()
    to_mask = (out[m] == VOCAB.mask).sum().item() / n
    kept = (out[m] == x[m]).sum().item() / n
    changed = ((out[m] != x[m]) & (out[m] != VOCAB.mask)).sum().item() / n
    # a random draw can hit [MASK] or the original token (each with prob 1/V of the 10%)
    assert abs(to_mask - (0.8 + 0.1 / V)) < 0.01
    assert abs(kept - (0.1 + 0.1 / V)) < 0.01
    assert abs(changed - 0.1 * (1 - 2 / V)) < 0.01


def test_random_replacements_are_uniform_over_the_vocab():
    x = torch.full((1, 200_000), 7)
    m = torch.ones_like(x, dtype=torch.bool)
    out = masking.apply_bert_replacement(x, m, VOCAB.mask, V, rng(3), mask_token_prob=0.0, random_token_prob=1.0)
    counts = torch.bincount(out.flatten(), minlength=V).float()
    assert counts.numel() == V                                 # nothing outside [0, V)
    expected = out.numel() / V
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 99 + 5 * (2 * 99) ** 0.5                     # df = 99: mean 99, sd 14
    assert (counts > 0.8 * expected).all()


def test_replacement_probabilities_are_honoured():
    x = torch.full((1, 100_000), 7)
    m = torch.ones_like(x, dtype=torch.bool)
    all_mask = masking.apply_bert_replacement(x, m, VOCAB.mask, V, rng(0), 1.0, 0.0)
    assert (all_mask == VOCAB.mask).all()
    none = masking.apply_bert_replacement(x, m, VOCAB.mask, V, rng(0), 0.0, 0.0)
    assert torch.equal(none, x)


def test_corruption_is_deterministic_in_the_generator():
    x = batch_ids(4, 32)
    cand = candidates_of(x)
    ws = torch.ones(V, dtype=torch.bool)
    ws[50:] = False
    fns = {
        "token": lambda g: masking.token_mask(cand, 0.15, g),
        "whole_word": lambda g: masking.whole_word_mask(x, cand, ws, 0.15, g),
        "span": lambda g: masking.span_mask(cand, 0.15, g),
        "replace": lambda g: masking.apply_bert_replacement(x, cand, VOCAB.mask, V, g),
    }
    for name, fn in fns.items():
        a, b, c = fn(rng(5)), fn(rng(5)), fn(rng(6))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name
    torch.manual_seed(0)
    a = fns["token"](rng(5))
    torch.manual_seed(1)
    assert torch.equal(a, fns["token"](rng(5)))                # the global RNG plays no part


def words_of(ids_row: torch.Tensor, cand_row: torch.Tensor, word_start: torch.Tensor) -> list[list[int]]:
    """Words as lists of positions: a candidate start token followed by its "##" candidates."""
    words: list[list[int]] = []
    prev_cand = False
    for t, (tok, c) in enumerate(zip(ids_row.tolist(), cand_row.tolist())):
        if not c:
            prev_cand = False
            continue
        if word_start[tok] or not prev_cand:
            words.append([t])
        else:
            words[-1].append(t)
        prev_cand = True
    return words


@pytest.mark.parametrize("leading", ["cls", "continuation"])
def test_whole_word_mask_masks_complete_words(leading):
    word_start = torch.ones(V, dtype=torch.bool)
    word_start[60:] = False                                    # ids 60.. are "##" continuations
    B, T = 64, 48
    x = batch_ids(B, T, seed=4, pad_from=[T - (b % 7) * 3 for b in range(B)])
    if leading == "continuation":                              # a cropped view may start mid-word
        x[:, 0] = 70                                           # ... and end without [SEP]
        x[:, -1] = torch.where(x[:, -1] == VOCAB.sep, 20, x[:, -1])
    cand = candidates_of(x)
    longest = 0
    for seed in range(5):
        m = masking.whole_word_mask(x, cand, word_start, 0.15, rng(seed))
        assert not (m & ~cand).any()
        budget = masking.budget_for(cand, 0.15)
        for b in range(B):
            words = words_of(x[b], cand[b], word_start)
            longest = max(longest, *map(len, words))
            for w in words:
                flags = m[b, w].tolist()
                assert all(flags) or not any(flags), (b, w, flags)
            k = int(m[b].sum())
            assert 1 <= k <= int(budget[b]) + max(map(len, words))
            assert k >= int(budget[b]) - max(map(len, words))     # it fills the budget up to a word
    assert longest > 1                                         # the test data has multi-piece words


def test_mlm_whole_word_uses_vocab_word_start():
    word_start = torch.ones(V, dtype=torch.bool)
    word_start[60:] = False
    vocab = Vocab(size=V, word_start=word_start)
    cfg = EncoderConfig(vocab_size=V, hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)
    mlm = MLM(MLMConfig(masking="whole_word"), cfg, vocab)
    # every token is a start then two continuations: words of exactly 3 pieces
    x = torch.tensor([[2] + [10, 70, 80] * 20 + [3]]).repeat(16, 1)
    out = mlm.corrupt(TokenBatch(x), rng(0))
    chosen = out.labels.ne(-100)
    groups = chosen[:, 1:-1].view(16, 20, 3)
    assert (groups.all(-1) | ~groups.any(-1)).all()            # whole 3-piece words only
    assert (chosen.sum(-1) % 3 == 0).all()
    # token masking on the same text splits some words
    plain = MLM(MLMConfig(masking="token"), cfg, vocab).corrupt(TokenBatch(x), rng(0))
    g2 = plain.labels.ne(-100)[:, 1:-1].view(16, 20, 3)
    assert not (g2.all(-1) | ~g2.any(-1)).all()
    with pytest.raises(ValueError, match="word_start"):
        MLM(MLMConfig(masking="whole_word"), cfg, Vocab(size=V))


def random_word_rows(B: int, T: int, seed: int) -> torch.Tensor:
    """[CLS] words [SEP] [PAD]...: word lengths uniform in 1..4 (a start id 10..59, then ids 60..),
    a row padded from a random point in its last quarter so that the candidate counts vary."""
    g = rng(seed)
    x = torch.full((B, T), VOCAB.pad)
    for b in range(B):
        end = T - int(torch.randint(0, T // 4, (1,), generator=g))          # [SEP] at end - 1
        x[b, 0] = VOCAB.cls
        t = 1
        while t < end - 1:
            n = min(int(torch.randint(1, 5, (1,), generator=g)), end - 1 - t)
            x[b, t] = int(torch.randint(10, 60, (1,), generator=g))
            x[b, t + 1:t + n] = torch.randint(60, V, (n - 1,), generator=g)
            t += n
        x[b, end - 1] = VOCAB.sep
    return x


@pytest.mark.parametrize("T", [64, 128])
def test_whole_word_mask_fills_the_budget_like_bert(T):
    """BERT's create_masked_lm_predictions skips a word that overflows the budget and keeps trying
    the others; stopping at the first overflow (the old rule) masked 13.2% at T=64 and 14.1% at
    T=128 of these rows' candidates, against a budget of 15.0%."""
    word_start = torch.ones(V, dtype=torch.bool)
    word_start[60:] = False
    B = 1000
    x = random_word_rows(B, T, seed=T)
    cand = candidates_of(x)
    m = masking.whole_word_mask(x, cand, word_start, 0.15, rng(7))
    budget = masking.budget_for(cand, 0.15)
    k = m.sum(-1)
    rate, target = k.sum().item() / cand.sum().item(), budget.sum().item() / cand.sum().item()
    assert abs(target - 0.15) < 0.002                           # sum of round(0.15 n) over the rows
    assert abs(rate - target) < 0.001, (rate, target)           # the realised rate is the budget's
    assert (k <= budget).all()                                  # budgets of 7+: a word of <= 4 always fits
    for b in range(B):
        words = words_of(x[b], cand[b], word_start)
        flags = [bool(m[b, w[0]]) for w in words]
        assert all(bool(m[b, w].all()) == f and bool(m[b, w].any()) == f for w, f in zip(words, flags))
        left = [len(w) for w, f in zip(words, flags) if not f]
        assert not left or min(left) > budget[b] - k[b], (b, int(k[b]), int(budget[b]), left)  # none fits
    # a row whose every word is longer than its budget still gets one word (the first drawn)
    x = torch.tensor([[VOCAB.cls] + [10, 70, 71] * 2 + [VOCAB.sep]])      # 6 candidates, budget 1
    m = masking.whole_word_mask(x, candidates_of(x), word_start, 0.15, rng(0))
    assert m.sum().item() == 3 and (m[0, 1:4].all() or m[0, 4:7].all())


WORDY_TEXT = ["the unbelievable understanding of tokenizers", "foxes jumped over sleeping dogs",
              "understanding unbelievable dogs", "the quick brown fox jumps over the lazy dog"]


def _tokenizer_file(tmp_path, kind: str):
    """A tokenizer trained on a few sentences: a Unigram with a Metaspace pre-tokenizer
    (SentencePiece style), a byte-level BPE (GPT-2 style, inside a Sequence), a BERT WordPiece, or a
    BPE over whitespace-split words with no continuation prefix (no word-start convention)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if kind == "metaspace":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=80, special_tokens=specials, unk_token="[UNK]")
    elif kind == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=True)])
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordPieceTrainer(vocab_size=80, special_tokens=specials)
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=specials)
    tok.train_from_iterator(WORDY_TEXT * 5, trainer)
    path = tmp_path / f"{kind}.json"
    tok.save(str(path))
    return path


def _prepared(tmp_path, tokenizer_path):
    from unimask.data.prepare import PrepareConfig, prepare
    from unimask.data.store import TokenStore

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(WORDY_TEXT) + "\n")
    out = tmp_path / "data"
    prepare([text], out, PrepareConfig(tokenizer=str(tokenizer_path), valid_fraction=0.0), log=lambda *a: None)
    return TokenStore(out)


BYTE_LEVEL_SPACES = ("\u0120", "\u0109", "\u010a", "\u010b", "\u010c", "\u010d")   # " ", "\t", "\n", ... as Ġ, ĉ, Ċ


@pytest.mark.parametrize("kind,starts", [("metaspace", lambda t: t.startswith("\u2581")),
                                         ("byte_level", lambda t: t.startswith(BYTE_LEVEL_SPACES)),
                                         ("wordpiece", lambda t: not t.startswith("##"))])
def test_word_starts_follow_the_tokenizer_convention(tmp_path, kind, starts):
    store = _prepared(tmp_path, _tokenizer_file(tmp_path, kind))
    tok, table = store.tokenizer(), store.word_start_mask()
    assert table.shape == (tok.get_vocab_size(),) and table.dtype == torch.bool
    assert 0 < int(table.sum()) < table.numel() - 5                  # words and continuations both
    for token, i in tok.get_vocab().items():
        want = i in store.special_ids.values() or starts(token)
        assert bool(table[i]) == want, (token, i)
    # encoded rows: the words whole-word masking sees are the pre-tokenizer's words
    encodings = tok.encode_batch(WORDY_TEXT, add_special_tokens=False)
    T = 2 + max(len(e.ids) for e in encodings)
    sp = store.special_ids
    x = torch.full((len(encodings), T), sp["pad"])
    for b, e in enumerate(encodings):
        x[b, :len(e.ids) + 2] = torch.tensor([sp["cls"], *e.ids, sp["sep"]])
    cand = ~torch.isin(x, torch.tensor(list(sp.values())))
    longest = 0
    for b, e in enumerate(encodings):
        got = words_of(x[b], cand[b], table)
        want = [[1 + t for t, w in enumerate(e.word_ids) if w == word] for word in dict.fromkeys(e.word_ids)]
        assert got == want, (e.tokens, got)
        longest = max(longest, *map(len, got))
    assert longest > 1                                            # multi-piece words are in the data
    x = x.repeat(50, 1)                                           # many draws: whole words only
    cand = cand.repeat(50, 1)
    m = masking.whole_word_mask(x, cand, table, 0.15, rng(0))
    for b in range(x.shape[0]):
        for w in words_of(x[b], cand[b], table):
            assert m[b, w].all() or not m[b, w].any()
        e = encodings[b % len(encodings)]
        masked_words = {e.word_ids[t - 1] for t in m[b].nonzero().flatten().tolist()}
        assert all(m[b, 1 + t] for t, w in enumerate(e.word_ids) if w in masked_words), e.tokens


@pytest.mark.slow
def test_whole_word_masking_without_a_word_convention_is_a_user_error(tmp_path, capsys):
    from unimask import cli
    from unimask.errors import UserError

    path = _tokenizer_file(tmp_path, "plain_bpe")
    store = _prepared(tmp_path, path)
    with pytest.raises(UserError) as e:
        store.word_start_mask()
    message = str(e.value)
    assert "\n" not in message and str(store.directory / "tokenizer.json") in message and str(path) in message
    assert "marks no word starts" in message and "objective.masking=token or span" in message
    # `pretrain` refuses whole-word masking in one line; token masking on the same data runs
    base = ["pretrain", "--data", str(store.directory), "--quiet", "--set", "train.steps=1",
            "--set", "train.batch_size=2", "--set", "data.seq_len=16", "--set", "train.device=cpu",
            "--set", "train.eval_batches=1"]
    code = cli.main(base + ["--out", str(tmp_path / "run_ww"), "--set", "objective.masking=whole_word"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"unimask pretrain: error: {message}"
    assert not (tmp_path / "run_ww").exists()                  # refused before the run directory is made
    assert cli.main(base + ["--out", str(tmp_path / "run_token"), "--set", "objective.masking=token"]) == 0
    assert (tmp_path / "run_token" / "config.json").is_file()


def runs(row: torch.Tensor) -> list[int]:
    lengths, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            lengths.append(n)
            n = 0
    return lengths


def test_span_mask_contiguous_runs_and_budget():
    B, T = 32, 128
    x = batch_ids(B, T, seed=6, pad_from=[T - 4 * (b % 5) for b in range(B)])
    x[:, T // 2] = 9                                           # no stray [UNK]: one stretch of candidates
    cand = candidates_of(x)
    m = masking.span_mask(cand, 0.15, rng(0))
    assert not (m & ~cand).any()
    assert torch.equal(m.sum(-1), masking.budget_for(cand, 0.15))
    all_runs = [r for row in m for r in runs(row)]
    assert sum(all_runs) == m.sum()
    assert sum(all_runs) / len(all_runs) > 2.0                 # spans, not scattered tokens (token masking: ~1.2)
    assert max(all_runs) >= 5
    token_runs = [r for row in masking.token_mask(cand, 0.15, rng(0)) for r in runs(row)]
    assert sum(token_runs) / len(token_runs) < 1.5


def test_mlm_corrupt_labels():
    cfg = EncoderConfig(vocab_size=V, hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)
    mlm = MLM(MLMConfig(), cfg, VOCAB)
    x = batch_ids(8, 40, pad_from=[40, 30, 20, 40, 40, 12, 40, 40])
    mask = torch.ones_like(x, dtype=torch.bool)
    out = mlm.corrupt(TokenBatch(x, attention_mask=mask), rng(0))
    assert torch.equal(x, batch_ids(8, 40, pad_from=[40, 30, 20, 40, 40, 12, 40, 40]))   # input untouched
    assert out.attention_mask is mask
    chosen = out.labels.ne(-100)
    assert torch.equal(out.labels[chosen], x[chosen])
    assert (out.labels[~chosen] == -100).all()
    assert torch.equal(out.input_ids[~chosen], x[~chosen])
    assert not torch.isin(x[chosen], SPECIAL).any()
    assert (out.input_ids[chosen] == VOCAB.mask).float().mean() > 0.6
    assert torch.equal(chosen.sum(-1), masking.budget_for(candidates_of(x), 0.15))


@pytest.mark.parametrize("masking_kind", ["token", "span"])
def test_mlm_forward_sparse_head_equals_full_reference(masking_kind):
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=V, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                        max_positions=64, dropout=0.0, attention_dropout=0.0)
    encoder = Encoder(cfg).eval()
    mlm = MLM(MLMConfig(masking=masking_kind), cfg, VOCAB).eval()
    x = batch_ids(4, 24, pad_from=[24, 16, 24, 10])
    batch = mlm.corrupt(TokenBatch(x, attention_mask=x.ne(VOCAB.pad)), rng(1))
    out = mlm(encoder, batch)
    chosen = batch.labels.ne(-100)
    assert out.num_targets.item() == chosen.sum().item() > 0

    hidden = encoder(batch.input_ids, attention_mask=batch.attention_mask)           # (B, T, D)
    full = mlm.head(hidden.view(-1, 16), encoder.word_embeddings.weight).view(4, 24, V)  # every position
    logits = full[chosen]
    want = F.cross_entropy(logits, batch.labels[chosen])
    torch.testing.assert_close(out.loss / out.num_targets, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, F.cross_entropy(full.view(-1, V), batch.labels.view(-1), reduction="sum"),
                               rtol=1e-5, atol=1e-5)                                   # ignore_index=-100
    loss_sum, count = out.metrics["mlm_loss"]
    assert loss_sum.item() == pytest.approx(out.loss.item()) and count.item() == chosen.sum().item()
    correct, count = out.metrics["mlm_acc"]
    assert correct.item() == (logits.argmax(-1) == batch.labels[chosen]).sum().item()

    # gradients of the summed loss agree with the reference's too
    params = [p for p in list(encoder.parameters()) + list(mlm.parameters()) if p.requires_grad]
    g_sparse = torch.autograd.grad(out.loss, params, allow_unused=True)
    ref = F.cross_entropy(mlm.head(encoder(batch.input_ids, attention_mask=batch.attention_mask).view(-1, 16),
                                   encoder.word_embeddings.weight), batch.labels.view(-1), reduction="sum")
    g_full = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g_sparse, g_full):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
