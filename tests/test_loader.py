"""Blocks and loaders: block contents, padding only at the end, determinism, rank splits that add up
to the single-process stream, exact resumption, epochs, and fixed evaluation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimask.data.loader import Blocks, DataConfig, TrainLoader, corruption_rng, eval_batches
from unimask.data.store import TokenStore
from unimask.objectives import TokenBatch, Vocab
from unimask.objectives.mlm import MLM, MLMConfig
from unimask.model.encoder import EncoderConfig

PAD, CLS = 0, 2
FIRST = 10                                 # stream token k has id FIRST + k, so a block names itself


class FakeStore:
    """What Blocks reads from a TokenStore: a flat token array, its length, and the special ids."""

    def __init__(self, n: int):
        self.tokens = np.arange(FIRST, FIRST + n, dtype=np.uint16)
        self.special_ids = {"pad": PAD, "unk": 1, "cls": CLS, "sep": 3, "mask": 4}

    def __len__(self) -> int:
        return len(self.tokens)


def block_index(row: torch.Tensor, stride: int) -> int:
    return (int(row[1]) - FIRST) // stride


def identity(batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
    return batch


def noisy(batch: TokenBatch, rng: torch.Generator) -> TokenBatch:
    """A corruption that records its RNG draws in the labels, so batches compare their corruption."""
    return batch.replace(labels=torch.randint(0, 1 << 30, batch.input_ids.shape, generator=rng))


def same(a: TokenBatch, b: TokenBatch) -> bool:
    masks = (a.attention_mask is None) == (b.attention_mask is None) and (
        a.attention_mask is None or torch.equal(a.attention_mask, b.attention_mask))
    labels = (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
    return torch.equal(a.input_ids, b.input_ids) and masks and labels


def test_blocks_are_cls_plus_stream_slices():
    store = FakeStore(100)
    L = 16
    stride = L - 1
    full = Blocks(store, L, full_only=True)
    tail = Blocks(store, L, full_only=False)
    assert len(full) == 100 // stride == 6 and len(tail) == 7
    batch = full.gather(np.arange(6))
    assert batch.input_ids.shape == (6, L) and batch.input_ids.dtype == torch.long
    assert batch.attention_mask is None                           # full blocks need no mask
    assert (batch.input_ids[:, 0] == CLS).all()
    for i in range(6):
        assert batch.input_ids[i, 1:].tolist() == store.tokens[i * stride:(i + 1) * stride].tolist()
    last = tail.gather(np.array([6, 0]))                          # a short block pads the whole batch's mask
    assert last.input_ids[0, 1:11].tolist() == store.tokens[90:].tolist()
    assert (last.input_ids[0, 11:] == PAD).all()
    assert last.attention_mask is not None
    assert last.attention_mask[0].tolist() == [True] * 11 + [False] * 5
    assert last.attention_mask[1].all()


def test_tiny_and_empty_streams():
    assert len(Blocks(FakeStore(5), 16, full_only=True)) == 1     # a short stream still makes one block
    one = Blocks(FakeStore(5), 16, full_only=True).gather(np.array([0]))
    assert one.input_ids[0].tolist() == [CLS] + list(range(FIRST, FIRST + 5)) + [PAD] * 10
    assert len(Blocks(FakeStore(0), 16, full_only=False)) == 0
    with pytest.raises(ValueError, match="empty"):
        TrainLoader(Blocks(FakeStore(0), 16, full_only=True), 2, 0, identity)
    with pytest.raises(ValueError):
        DataConfig(seq_len=4)


def test_blocks_on_a_prepared_corpus(kjv_data):
    store = TokenStore(kjv_data, "valid")
    blocks = Blocks(store, 32, full_only=False)
    n = len(store)
    assert len(blocks) == -(-n // 31)
    last = len(blocks) - 1
    batch = blocks.gather(np.array([0, last]))
    cls, pad = store.special_ids["cls"], store.special_ids["pad"]
    assert (batch.input_ids[:, 0] == cls).all()
    assert batch.input_ids[0, 1:].tolist() == store.tokens[:31].astype(np.int64).tolist()
    tail = store.tokens[last * 31:].astype(np.int64).tolist()
    assert batch.input_ids[1, 1:1 + len(tail)].tolist() == tail
    if len(tail) < 31:
        assert batch.attention_mask is not None and batch.attention_mask[1].sum() == 1 + len(tail)
        assert (batch.input_ids[1, 1 + len(tail):] == pad).all()
    assert blocks.gather(np.array([0, 1])).attention_mask is None


def test_train_loader_is_deterministic_in_its_seed():
    blocks = Blocks(FakeStore(400), 8, full_only=True)
    la, lb, lc = TrainLoader(blocks, 4, 7, noisy), TrainLoader(blocks, 4, 7, noisy), TrainLoader(blocks, 4, 8, noisy)
    xs, ys, zs = [next(la) for _ in range(6)], [next(lb) for _ in range(6)], [next(lc) for _ in range(6)]
    assert all(same(x, y) for x, y in zip(xs, ys))
    assert not any(torch.equal(x.input_ids, z.input_ids) for x, z in zip(xs, zs))
    assert not torch.equal(xs[0].labels, xs[1].labels)             # each micro-batch has its own RNG


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_the_single_process_stream(world):
    blocks = Blocks(FakeStore(300), 8, full_only=True)           # 42 blocks: batches cross epochs
    single = TrainLoader(blocks, 5, 3, noisy)
    reference = [next(single) for _ in range(4 * world)]
    ranks = [TrainLoader(blocks, 5, 3, noisy, rank=r, world_size=world) for r in range(world)]
    for step in range(4):
        for r, loader in enumerate(ranks):
            got = next(loader)
            assert same(got, reference[step * world + r]), (step, r)   # rank r: micro-batches r, r+W, ...
    assert all(loader.state_dict() == single.state_dict() for loader in ranks)


def test_state_dict_resumes_at_the_next_batch():
    blocks = Blocks(FakeStore(300), 8, full_only=True)
    for world, rank in ((1, 0), (2, 1)):
        straight = TrainLoader(blocks, 4, 11, noisy, rank, world)
        expected = [next(straight) for _ in range(20)]
        first = TrainLoader(blocks, 4, 11, noisy, rank, world)
        for _ in range(13):                                       # past the first epoch boundary
            next(first)
        state = first.state_dict()
        resumed = TrainLoader(blocks, 4, 11, noisy, rank, world)
        resumed.load_state_dict(dict(state))
        assert all(same(next(resumed), e) for e in expected[13:])
    with pytest.raises(ValueError):
        TrainLoader(blocks, 8, 11, noisy).load_state_dict(state)
    with pytest.raises(ValueError):
        TrainLoader(blocks, 4, 12, noisy).load_state_dict(state)


def test_every_block_once_per_epoch():
    L = 8
    blocks = Blocks(FakeStore(7 * 10), L, full_only=True)         # 10 blocks
    loader = TrainLoader(blocks, 3, 5, identity)
    seen = [block_index(row, L - 1) for _ in range(10) for row in next(loader).input_ids]   # 30 = 3 epochs
    epochs = [seen[i * 10:(i + 1) * 10] for i in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(10))
    assert epochs[0] != epochs[1] != epochs[2]                    # reshuffled every epoch
    assert loader.epoch() == pytest.approx(3.0)


def test_eval_batches_are_fixed_and_split_across_ranks():
    blocks = Blocks(FakeStore(7 * 11 + 3), 8, full_only=False)    # 12 blocks, the last one short
    first = list(eval_batches(blocks, 5, 10, 0, noisy))
    again = list(eval_batches(blocks, 5, 10, 0, noisy))
    assert len(first) == 3 and all(same(a, b) for a, b in zip(first, again))
    order = [block_index(row, 7) for b in first for row in b.input_ids]
    assert order == list(range(12))                               # held-out blocks in order, each once
    assert first[-1].attention_mask is not None and first[0].attention_mask is None
    assert len(list(eval_batches(blocks, 5, 2, 0, noisy))) == 2
    r0 = list(eval_batches(blocks, 5, 10, 0, noisy, rank=0, world_size=2))
    r1 = list(eval_batches(blocks, 5, 10, 0, noisy, rank=1, world_size=2))
    assert [len(r0), len(r1)] == [1, 1]                         # equal counts: FSDP's forward is collective
    assert same(r0[0], first[0]) and same(r1[0], first[1])
    lone = list(eval_batches(blocks, 5, 1, 0, noisy, rank=1, world_size=2))
    assert len(lone) == 1 and same(lone[0], first[0])           # fewer batches than ranks: shared
    # evaluation corruption is its own stream: not the training draws of the same index
    train_first = next(TrainLoader(blocks, 5, 0, noisy))
    assert not torch.equal(train_first.labels, first[0].labels)


def test_corruption_rng_streams():
    draw = lambda *a: torch.randint(0, 1 << 30, (8,), generator=corruption_rng(*a))   # noqa: E731
    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6))
    assert not torch.equal(draw(0, 5), draw(1, 5))
    assert not torch.equal(draw(0, 5, 0), draw(0, 5, 1))


def test_loader_with_mlm_corruption_on_real_data(kjv_data):
    store = TokenStore(kjv_data)
    vocab = Vocab(size=store.vocab_size, **{k: store.special_ids[k] for k in ("pad", "unk", "cls", "sep", "mask")},
                  word_start=store.word_start_mask())
    cfg = EncoderConfig(vocab_size=store.vocab_size, hidden_size=8, num_layers=1, num_heads=1, intermediate_size=8)
    mlm = MLM(MLMConfig(masking="whole_word"), cfg, vocab)
    blocks = Blocks(store, 32, full_only=True)
    one = TrainLoader(blocks, 4, 0, mlm.corrupt)
    two = [TrainLoader(blocks, 4, 0, mlm.corrupt, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        a, b = next(one), next(one)
        assert same(a, next(two[0])) and same(b, next(two[1]))
        assert a.labels.ne(-100).any() and (a.input_ids[:, 0] == vocab.cls).all()
