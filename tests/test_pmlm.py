"""UniLMv2 PMLM (objectives/pmlm.py, masking.blockwise_mask / pseudo_mask_attention): blockwise
masking statistics, the pseudo-masked layout, the one-pass attention layout against the rules, the
one-pass encoder against a step-by-step reference, losses, gradients and a short training run."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_run_config
from unimask import config as config_mod
from unimask.model.encoder import Encoder, EncoderConfig, attention_bias
from unimask.objectives import OBJECTIVES, PretrainModel, TokenBatch, Vocab, masking
from unimask.objectives.pmlm import PMLM, PMLMConfig
from unimask.recipes import RECIPES
from unimask.train.loop import train

VOCAB = Vocab(size=60)          # pad 0, unk 1, cls 2, sep 3, mask 4
SPECIAL = torch.tensor(VOCAB.special_ids)


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encoder_config(**changes) -> EncoderConfig:
    base = EncoderConfig(vocab_size=VOCAB.size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_positions=64, dropout=0.0, attention_dropout=0.0)
    return dataclasses.replace(base, **changes)


def text(B: int = 4, T: int = 40, seed: int = 0, padded_row: bool = False) -> TokenBatch:
    """[CLS] + ordinary tokens with a few [SEP]s at random places (a different count per row); with
    padded_row the last row is [PAD] from T // 2 on."""
    g = rng(seed)
    ids = torch.randint(5, VOCAB.size, (B, T), generator=g)
    ids[:, 0] = VOCAB.cls
    for b in range(B):
        ids[b, torch.randint(1, T, (b,), generator=g)] = VOCAB.sep
    if not padded_row:
        return TokenBatch(ids)
    real = torch.ones_like(ids, dtype=torch.bool)
    real[-1, T // 2:] = False
    return TokenBatch(ids.masked_fill(~real, VOCAB.pad), attention_mask=real)


def model(seed: int = 0, cfg: PMLMConfig | None = None, **encoder_changes) -> PretrainModel:
    torch.manual_seed(seed)
    enc_cfg = encoder_config(**encoder_changes)
    return PretrainModel(Encoder(enc_cfg), PMLM(cfg or PMLMConfig(), enc_cfg, VOCAB)).eval()


def blocks_of(block_row: torch.Tensor) -> dict[int, list[int]]:
    """(T,) block index -> {order: sorted positions}."""
    out: dict[int, list[int]] = {}
    for t, k in enumerate(block_row.tolist()):
        if k >= 0:
            out.setdefault(k, []).append(t)
    return out


# ---- blockwise masking --------------------------------------------------------------------------

def test_blockwise_mask_budget_blocks_and_determinism():
    T = 48
    lengths = [48, 30, 17, 6, 2]                                   # rows padded from here on
    ids = torch.randint(5, VOCAB.size, (5, T), generator=rng(0))
    ids[:, 0] = VOCAB.cls
    ids[:, 11] = VOCAB.sep
    for b, n in enumerate(lengths):
        ids[b, n:] = VOCAB.pad
    cand = ~torch.isin(ids, SPECIAL)
    for seed in range(30):
        mask, block = masking.blockwise_mask(cand, 0.15, rng(seed))
        assert torch.equal(mask, block.ge(0)) and not (mask & ~cand).any()
        assert mask.sum(-1).tolist() == masking.budget_for(cand, 0.15).tolist()    # exact, no overshoot
        for b in range(5):
            blocks = blocks_of(block[b])
            assert sorted(blocks) == list(range(len(blocks)))                      # orders 0..K-1
            for positions in blocks.values():                                      # contiguous, 1..6
                assert positions == list(range(positions[0], positions[0] + len(positions)))
                assert 1 <= len(positions) <= 6
        again = masking.blockwise_mask(cand, 0.15, rng(seed))
        assert torch.equal(again[1], block)
    # an explicit budget, clipped to the candidates; nothing to mask masks nothing
    mask, _ = masking.blockwise_mask(cand, 0.15, rng(0), budget=torch.tensor([10, 10, 10, 10, 10]))
    assert mask.sum(-1).tolist() == [10, 10, 10, 5, 1]
    assert not masking.blockwise_mask(torch.zeros(2, 9, dtype=torch.bool), 0.15, rng(0))[0].any()


def block_lengths(block: torch.Tensor) -> Counter:
    lengths: Counter = Counter()
    for row in block:
        lengths.update(len(p) for p in blocks_of(row).values())
    return lengths


def test_blockwise_mask_statistics():
    """15% of each row, 40% of blocks long (2..6 uniform), uniform factorization order."""
    B, T = 600, 128
    cand = torch.ones(B, T, dtype=torch.bool)
    cand[:, 0] = cand[:, -1] = False                               # [CLS] ... [SEP]
    cand[:, 60] = False                                            # a [SEP] inside
    mask, block = masking.blockwise_mask(cand, 0.15, rng(0))
    assert (mask.sum(-1) == round(0.15 * 125)).all()
    assert not mask[:, [0, 60, T - 1]].any()
    # the proposal distribution shows where rejection and truncation are rare: a sparse budget on long rows
    sparse = masking.blockwise_mask(torch.ones(300, 512, dtype=torch.bool), 0.05, rng(1))[1]
    lengths = block_lengths(sparse)
    total = sum(lengths.values())
    assert abs(lengths[1] / total - 0.6) < 0.03, lengths
    for n in range(2, 7):
        assert abs(lengths[n] / total - 0.08) < 0.02, lengths
    assert set(lengths) <= set(range(1, 7))
    # at 15% of 125 tokens, long blocks are rejected more often (they overlap more) and the last block of
    # a row is cut to the budget, so the share of 1 rises a little and long lengths decay gently
    lengths = block_lengths(block)
    total = sum(lengths.values())
    assert 0.58 < lengths[1] / total < 0.70, lengths
    for n in range(2, 7):
        assert 0.04 < lengths[n] / total < 0.11, lengths
    # factorization order: the leftmost block's place in the order is uniform over 0..K-1
    relative = []
    for row in block[:300]:
        blocks = blocks_of(row)
        leftmost = min(blocks, key=lambda k: blocks[k][0])
        relative.append(leftmost / (len(blocks) - 1))
    assert abs(sum(relative) / len(relative) - 0.5) < 0.05


def test_corrupt_statistics_and_never_special():
    m = model()
    ids = torch.randint(5, VOCAB.size, (300, 64), generator=rng(3))
    ids[:, 0] = VOCAB.cls
    ids[:, 63] = VOCAB.sep
    ids[torch.arange(300), torch.randint(1, 63, (300,), generator=rng(4))] = VOCAB.sep   # one inside
    batch = TokenBatch(ids)
    out = m.objective.corrupt(batch, rng(0))
    ids = batch.input_ids
    masked = out.labels.ne(-100)
    assert not (masked & torch.isin(ids, SPECIAL)).any()
    assert (masked.sum(-1) == round(0.15 * 64)).all()             # the row length's 15%, whatever the [SEP]s
    corrupted = out.input_ids[:, :64]
    n = int(masked.sum())
    as_mask = int((corrupted[masked] == VOCAB.mask).sum()) / n
    kept = int((corrupted[masked] == ids[masked]).sum()) / n
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1 - 0.1 / VOCAB.size) < 0.03
    assert torch.equal(corrupted[~masked], ids[~masked])


# ---- the pseudo-masked layout -------------------------------------------------------------------

TEXT, ORIGINAL, PSEUDO, PADDING = "text", "original", "pseudo", "padding"


def slots(batch: TokenBatch, out: TokenBatch, b: int) -> list[tuple[str, int]]:
    """Row b of a corrupted batch as (kind, block order) per slot, read off the layout's contents."""
    L, N = out.labels.shape[1], out.extras["pseudo_labels"].shape[1]
    real = batch.attention_mask[b] if batch.attention_mask is not None else torch.ones(L, dtype=torch.bool)
    block = out.extras["block_index"][b]
    row = [(TEXT if real[t] else PADDING, -1) for t in range(L)]
    for kind, offset in ((ORIGINAL, L), (PSEUDO, L + N)):
        for j in range(N):
            if out.extras["pseudo_labels"][b, j] == -100:
                row.append((PADDING, -1))
            else:
                row.append((kind, int(block[out.position_ids[b, offset + j]])))
    return row


def may_attend_by_the_rules(query: tuple[str, int], key: tuple[str, int], same_slot: bool) -> bool:
    """DESIGN.md section 4 (UniLMv2 PMLM), one rule at a time."""
    (q_kind, q_block), (k_kind, k_block) = query, key
    if q_kind == PADDING:
        return same_slot                                  # padding: finite, ignored
    if k_kind == PADDING:
        return False
    if q_kind == TEXT:                                    # context and [M]: context and [M] only
        return k_kind == TEXT
    if q_kind == PSEUDO:                                  # context, [M], earlier originals, own [P]s
        return (k_kind == TEXT or (k_kind == ORIGINAL and k_block < q_block)
                or (k_kind == PSEUDO and k_block == q_block))
    return k_kind == TEXT or (k_kind == ORIGINAL and k_block <= q_block)   # originals: up to their own


@pytest.mark.parametrize("padded_row", [False, True])
def test_layout_contents(padded_row: bool):
    m = model()
    batch = text(padded_row=padded_row)
    ids, (B, L) = batch.input_ids, batch.input_ids.shape
    out = m.objective.corrupt(batch, rng(1))
    masked, block = out.labels.ne(-100), out.extras["block_index"]
    N = out.extras["pseudo_labels"].shape[1]
    assert N == round(0.15 * L) and out.input_ids.shape == (B, L + 2 * N) == out.position_ids.shape
    assert out.attention_mask.shape == (B, L + 2 * N, L + 2 * N) and out.attention_mask.dtype == torch.bool
    assert out.num_tokens == B * L                                 # tokens/s counts the text
    assert torch.equal(masked, block.ge(0)) and torch.equal(out.labels[masked], ids[masked])
    assert torch.equal(out.position_ids[:, :L], torch.arange(L).expand(B, L))
    for b in range(B):
        n = int(masked[b].sum())
        real = int(batch.attention_mask[b].sum()) if padded_row else L
        assert n == round(0.15 * real)
        originals, pseudo = slice(L, L + n), slice(L + N, L + N + n)
        pos = out.position_ids[b, originals]
        assert torch.equal(out.position_ids[b, pseudo], pos)                 # [P] where its token was
        assert sorted(pos.tolist()) == torch.nonzero(masked[b]).squeeze(1).tolist()
        steps = block[b, pos]
        assert (steps[1:] >= steps[:-1]).all()                                # factorization order
        assert torch.equal(out.input_ids[b, originals], ids[b, pos])         # the original tokens
        assert out.input_ids[b, pseudo].eq(VOCAB.mask).all()                 # [P] is the [MASK] id
        assert torch.equal(out.extras["pseudo_labels"][b, :n], ids[b, pos])
        assert out.extras["pseudo_labels"][b, n:].eq(-100).all()
        assert out.input_ids[b, L + n:L + N].eq(VOCAB.pad).all() and out.input_ids[b, L + N + n:].eq(VOCAB.pad).all()
    again = m.objective.corrupt(batch, rng(1))
    assert torch.equal(again.input_ids, out.input_ids) and torch.equal(again.attention_mask, out.attention_mask)
    types = (torch.arange(L) >= L // 2).long().expand(B, L)                   # segment B from the middle on
    typed = m.objective.corrupt(batch.replace(token_type_ids=types), rng(1))
    assert torch.equal(typed.input_ids, out.input_ids) and torch.equal(typed.token_type_ids[:, :L], types)
    appended = typed.token_type_ids[:, L:]
    real_slot = out.input_ids[:, L:].ne(VOCAB.pad)
    assert torch.equal(appended[real_slot], (out.position_ids[:, L:] >= L // 2).long()[real_slot])


@pytest.mark.parametrize("padded_row", [False, True])
def test_attention_layout_matches_the_rules(padded_row: bool):
    m = model()
    batch = text(B=3, T=24, padded_row=padded_row, seed=5)
    out = m.objective.corrupt(batch, rng(2))
    for b in range(3):
        row = slots(batch, out, b)
        expected = torch.tensor([[may_attend_by_the_rules(q, k, i == j) for j, k in enumerate(row)]
                                 for i, q in enumerate(row)])
        assert torch.equal(out.attention_mask[b], expected)
        assert out.attention_mask[b].any(-1).all()                           # no query sees nothing
    assert len(blocks_of(out.extras["block_index"][0])) >= 2                 # several steps to order


# ---- the one-pass encoder against a step-by-step reference ----------------------------------------

def exact_model(norm: str = "post", num_layers: int = 2) -> PretrainModel:
    """float64, no dropout, absolute positions and a relative bias, peaked attention (order matters)."""
    return model(norm=norm, num_layers=num_layers, relative_buckets=16, relative_max_distance=32,
                 initializer_range=0.3).double()


def steps_of(out: TokenBatch, b: int) -> list[list[int]]:
    """Row b's masked positions per factorization step."""
    blocks = blocks_of(out.extras["block_index"][b])
    return [blocks[k] for k in range(len(blocks))]


def reference_states(enc: Encoder, pieces: list[tuple[torch.Tensor, torch.Tensor]],
                     sees: list[list[int]], text_real: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states of the groups `pieces` = [(ids (n,), position ids (n,))...] computed one group at
    a time, like decoding with a cache: at every layer, group g runs on the explicit input made of
    the previous layer's states of the groups `sees[g]` (earlier groups) followed by its own, with
    plain key-padding masking (only text padding, group 0) and the relative bias of that input's
    position ids; group g's rows of the output are its states. No layout mask is involved."""
    states = [enc.embed(ids[None], position_ids=pos[None])[0][0] for ids, pos in pieces]   # (n, D) each
    for layer in enc.layers:
        new = []
        for g in range(len(pieces)):
            members = sees[g] + [g]
            x = torch.cat([states[h] for h in members])[None]                    # (1, S, D)
            pos = torch.cat([pieces[h][1] for h in members])[None]               # (1, S)
            real = torch.cat([text_real if h == 0 else torch.ones(len(pieces[h][1]), dtype=torch.bool)
                              for h in members])[None]                           # (1, S)
            bias = enc.relative_bias(pos) if enc.relative_bias is not None else None
            y = layer(x, attention_bias(real, bias, x.dtype))[0]                 # (S, D)
            new.append(y[-len(pieces[g][1]):])
        states = new
    return [enc.final_norm(s) if enc.final_norm is not None else s for s in states]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_one_pass_equals_step_by_step_reference(norm: str):
    """The PAR hidden states and logits at every block's [P] slots (and the originals' states) equal
    a step-by-step computation that sees, for step k, only the context with its [M] slots (encoded
    by itself), the original tokens of the blocks before k in the order (each encoded from the
    context and the blocks up to itself) and block k's [P] tokens; the AE logits equal a plain
    bidirectional pass over the corrupted text alone."""
    m = exact_model(norm)
    enc, head = m.encoder, m.objective.head
    batch = text(B=3, T=24, padded_row=True, seed=7)
    out = m.objective.corrupt(batch, rng(3))
    L, N = out.labels.shape[1], out.extras["pseudo_labels"].shape[1]
    with torch.no_grad():
        hidden = enc(out.input_ids, position_ids=out.position_ids, attention_mask=out.attention_mask)  # (B, T', D)
        plain = enc(out.input_ids[:, :L], attention_mask=batch.attention_mask)                          # (B, L, D)
        real = batch.attention_mask
        torch.testing.assert_close(hidden[:, :L][real], plain[real], atol=1e-10, rtol=1e-10)   # AE pass
        W = enc.word_embeddings.weight
        masked = out.labels.ne(-100)
        torch.testing.assert_close(head(hidden[:, :L][masked], W), head(plain[masked], W), atol=1e-10, rtol=1e-10)

        compared = 0
        for b in range(3):
            steps = steps_of(out, b)
            K = len(steps)
            text_piece = (out.input_ids[b, :L], torch.arange(L))
            ids = batch.input_ids[b]
            originals = [(ids[p], torch.tensor(p)) for p in steps]
            pseudo = [(torch.full((len(p),), VOCAB.mask), torch.tensor(p)) for p in steps]
            # groups: 0 text, 1..K originals of step 0..K-1, K+1..2K [P] of step 0..K-1
            sees = [[]] + [[0] + list(range(1, 1 + k)) for k in range(K)] \
                        + [[0] + list(range(1, 1 + k)) for k in range(K)]
            ref = reference_states(enc, [text_piece] + originals + pseudo, sees, real[b])
            torch.testing.assert_close(ref[0][real[b]], plain[b][real[b]], atol=1e-10, rtol=1e-10)
            appended = out.position_ids[b, L:L + N]
            slot = {int(p): j for j, p in enumerate(appended) if out.extras["pseudo_labels"][b, j] != -100}
            for k, positions in enumerate(steps):
                cols = [slot[p] for p in positions]
                one_pass_p = hidden[b, [L + N + c for c in cols]]                 # (n_k, D) [P] slots
                one_pass_o = hidden[b, [L + c for c in cols]]                     # (n_k, D) original slots
                torch.testing.assert_close(one_pass_p, ref[1 + K + k], atol=1e-10, rtol=1e-10)
                torch.testing.assert_close(one_pass_o, ref[1 + k], atol=1e-10, rtol=1e-10)
                torch.testing.assert_close(head(one_pass_p, W), head(ref[1 + K + k], W), atol=1e-10, rtol=1e-10)
                compared += len(positions)
        assert compared == int(masked.sum())
    assert max(len(steps_of(out, b)) for b in range(3)) >= 3                     # several steps ...
    assert max(len(p) for b in range(3) for p in steps_of(out, b)) >= 2           # ... and a multi-token block


@pytest.mark.parametrize("norm,padded_row,token_types", [("post", False, False), ("pre", True, True)])
def test_objective_encodes_in_two_calls_exactly_as_one_pass(norm: str, padded_row: bool, token_types: bool):
    """`PMLM.hidden_states` (the text alone, then the appended slots against its cached keys/values)
    gives the one-pass states over the whole layout, proven above, to float64 precision."""
    m = exact_model(norm)
    batch = text(B=3, T=24, padded_row=padded_row, seed=5)
    if token_types:
        batch = batch.replace(token_type_ids=(torch.arange(24) >= 12).long().expand(3, 24).clone())
    out = m.objective.corrupt(batch, rng(8))
    L, N = out.labels.shape[1], out.extras["pseudo_labels"].shape[1]
    with torch.no_grad():
        hidden = m.encoder(out.input_ids, position_ids=out.position_ids, token_type_ids=out.token_type_ids,
                           attention_mask=out.attention_mask)                    # (B, T', D)
        text_states, pseudo = m.objective.hidden_states(m.encoder, out)
    real = out.attention_mask[:, :L, :L].any(-1)                                 # text rows with a value
    torch.testing.assert_close(text_states[real], hidden[:, :L][real], atol=1e-10, rtol=1e-10)
    valid = out.extras["pseudo_labels"].ne(-100)
    assert int(valid.sum()) > 0 and N > 0
    torch.testing.assert_close(pseudo[valid], hidden[:, L + N:][valid], atol=1e-10, rtol=1e-10)


def test_one_layer_step_equals_a_plain_pass_over_the_visible_input():
    """With one layer, step k is literally the encoder on [context with [M] | originals of earlier
    blocks | block k's [P]] with plain padding masking. With two, such a plain pass would let the
    context read the appended tokens (the implicit leakage of section 3.2), so the one-pass model
    differs from it, and the layer-wise reference above is the right one."""
    for layers in (1, 2):
        m = exact_model(num_layers=layers)
        enc = m.encoder
        batch = text(B=2, T=24, seed=11)
        out = m.objective.corrupt(batch, rng(4))
        L, N = out.labels.shape[1], out.extras["pseudo_labels"].shape[1]
        with torch.no_grad():
            hidden = enc(out.input_ids, position_ids=out.position_ids, attention_mask=out.attention_mask)
            differences = []
            for b in range(2):
                steps = steps_of(out, b)
                slot = {int(p): j for j, p in enumerate(out.position_ids[b, L:L + N])}
                for k, positions in enumerate(steps):
                    earlier = [p for s in steps[:k] for p in s]
                    ids = torch.cat([out.input_ids[b, :L], batch.input_ids[b, earlier],
                                     torch.full((len(positions),), VOCAB.mask)])
                    pos = torch.cat([torch.arange(L), torch.tensor(earlier, dtype=torch.long), torch.tensor(positions)])
                    visible = enc(ids[None], position_ids=pos[None])[0, -len(positions):]      # (n_k, D)
                    one_pass = hidden[b, [L + N + slot[p] for p in positions]]
                    differences.append((visible - one_pass).abs().max())
            worst = float(torch.stack(differences).max())
        if layers == 1:
            assert worst < 1e-10
        else:
            assert worst > 1e-3


def test_appended_slot_order_changes_nothing():
    m = exact_model()
    out = m.objective.corrupt(text(B=2, T=24, seed=2), rng(5))
    L = out.labels.shape[1]
    T = out.input_ids.shape[1]
    perm = torch.cat([torch.arange(L), L + torch.randperm(T - L, generator=rng(0))])
    with torch.no_grad():
        a = m.encoder(out.input_ids, position_ids=out.position_ids, attention_mask=out.attention_mask)
        b = m.encoder(out.input_ids[:, perm], position_ids=out.position_ids[:, perm],
                      attention_mask=out.attention_mask[:, perm][:, :, perm])
    torch.testing.assert_close(b, a[:, perm], atol=1e-10, rtol=1e-10)


# ---- losses, switches, gradients, config ----------------------------------------------------------

def test_loss_is_ae_plus_par_and_weights_switch_parts_off():
    batch = text(padded_row=True)
    full = model()
    out = full.objective.corrupt(batch, rng(6))
    L, N = out.labels.shape[1], out.extras["pseudo_labels"].shape[1]
    with torch.no_grad():
        result = full(out)
        hidden = full.encoder(out.input_ids, position_ids=out.position_ids, attention_mask=out.attention_mask)
        W = full.encoder.word_embeddings.weight
        ae_sel, par_sel = out.labels.ne(-100), out.extras["pseudo_labels"].ne(-100)
        ae = F.cross_entropy(full.objective.head(hidden[:, :L][ae_sel], W), out.labels[ae_sel], reduction="sum")
        par = F.cross_entropy(full.objective.head(hidden[:, L + N:][par_sel], W), out.extras["pseudo_labels"][par_sel],
                              reduction="sum")
    n = int(ae_sel.sum())
    assert int(result.num_targets) == n == int(par_sel.sum())
    torch.testing.assert_close(result.loss, ae + par, atol=1e-4, rtol=1e-5)
    assert set(result.metrics) == {"mlm_loss", "mlm_acc", "par_loss", "par_acc"}
    torch.testing.assert_close(result.metrics["par_loss"], torch.stack([par, torch.tensor(float(n))]),
                               atol=1e-4, rtol=1e-5)
    summary = full.objective.summarize({"mlm_loss": 2.0, "par_loss": 3.0})
    assert summary["mlm_ppl"] == pytest.approx(7.389, rel=1e-3) and summary["par_ppl"] == pytest.approx(20.09, rel=1e-3)

    weighted = model(cfg=PMLMConfig(ae_weight=2.0, par_weight=0.5))
    with torch.no_grad():
        torch.testing.assert_close(weighted(out).loss, 2 * ae + 0.5 * par, atol=1e-4, rtol=1e-5)

    par_only = model(cfg=PMLMConfig(ae_weight=0.0))
    with torch.no_grad():
        res = par_only(par_only.objective.corrupt(batch, rng(6)))
    torch.testing.assert_close(res.loss, par, atol=1e-4, rtol=1e-5)
    assert set(res.metrics) == {"par_loss", "par_acc"} and int(res.num_targets) == n

    ae_only = model(cfg=PMLMConfig(par_weight=0.0))                  # blockwise MLM: nothing appended
    short = ae_only.objective.corrupt(batch, rng(6))
    assert short.input_ids.shape == batch.input_ids.shape and torch.equal(short.input_ids, out.input_ids[:, :L])
    assert torch.equal(short.attention_mask, batch.attention_mask)
    with torch.no_grad():
        res = ae_only(short)
    torch.testing.assert_close(res.loss, ae, atol=1e-4, rtol=1e-5)  # the context never saw the appended part
    assert set(res.metrics) == {"mlm_loss", "mlm_acc"} and int(res.num_targets) == n


@pytest.mark.parametrize("changes", [{}, {"norm": "pre", "relative_buckets": 16}])
def test_every_parameter_gets_a_gradient(changes: dict):
    m = model(**changes).train()
    m(m.objective.corrupt(text(), rng(0))).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_config_validation_registry_and_recipes():
    for bad, match in (({"mask_prob": 0.0}, "mask_prob"), ({"mask_prob": 1.0}, "mask_prob"),
                       ({"mask_token_prob": 0.95}, "mask_token_prob"),
                       ({"random_token_prob": -0.1}, "random_token_prob"),
                       ({"long_block_prob": 1.5}, "long_block_prob"), ({"min_long_length": 0}, "min_long_length"),
                       ({"min_long_length": 7}, "max_long_length"), ({"ae_weight": -1.0}, "ae_weight"),
                       ({"par_weight": float("nan")}, "par_weight"), ({"ae_weight": 0.0, "par_weight": 0.0}, "both")):
        with pytest.raises(ValueError, match=match):
            PMLMConfig(**bad)
    assert OBJECTIVES["pmlm"] is PMLM
    cfg = config_mod.apply_overrides(config_mod.RunConfig(), ["objective_name=pmlm", "objective.par_weight=0.5"])
    assert isinstance(cfg.objective, PMLMConfig) and cfg.objective.par_weight == 0.5
    for name in ("pmlm_mini", "pmlm_small", "pmlm_base"):
        recipe = RECIPES[name]()
        assert recipe.objective_name == "pmlm" and recipe.model.relative_buckets == 32
        t = recipe.train
        assert (t.beta1, t.beta2, t.adam_eps, t.weight_decay) == (0.9, 0.98, 1e-6, 0.01)
        back = config_mod.from_dict(json.loads(json.dumps(recipe.to_dict())))
        assert back == recipe and type(back.objective) is PMLMConfig
    for size in ("mini", "small"):
        assert RECIPES[f"pmlm_{size}"]().train == RECIPES[f"mlm_{size}"]().train    # comparable runs
    assert RECIPES["pmlm_base"]().train.lr == 6e-4


# ---- end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_lowers_the_loss(kjv_data: Path, tmp_path: Path):
    cfg = tiny_run_config(kjv_data, steps=40, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=40, eval_batches=2)
    cfg.objective_name, cfg.objective = "pmlm", PMLMConfig()
    cfg.model.relative_buckets = 16
    last = train(cfg, tmp_path / "run", progress=False)
    assert {"loss", "mlm_acc", "mlm_ppl", "par_acc", "par_ppl"} <= set(last)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses
