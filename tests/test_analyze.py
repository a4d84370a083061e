"""`unimask analyze rank`: effective-rank arithmetic, per-layer states, and the command end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import tiny_run_config
from unimask import cli
from unimask.analyze import RankStats, effective_rank, layer_states
from unimask.model.encoder import Encoder, EncoderConfig
from unimask.objectives.maelm import MAELMConfig
from unimask.train.loop import train


def numpy_ranks(x: np.ndarray, center: bool) -> tuple[int, float]:
    """Straight from the definitions, with numpy's SVD."""
    if center:
        x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    explained = np.cumsum(s ** 2) / np.sum(s ** 2)
    pc90 = int(np.argmax(explained >= 0.9)) + 1
    p = s / s.sum()
    p = p[p > 0]
    return pc90, float(np.exp(-np.sum(p * np.log(p))))


@pytest.mark.parametrize("center", [True, False])
def test_effective_rank_matches_numpy_svd(center: bool):
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    x = rng.standard_normal((300, 24)) @ np.diag(np.geomspace(4.0, 0.01, 24)) @ rotation
    x += 3.0                                                      # a common offset, which centring removes
    pc90, erank = numpy_ranks(x, center)
    ours = effective_rank(torch.tensor(x, dtype=torch.float32), center=center)
    assert ours["pc90"] == pc90 and ours["tokens"] == 300
    assert ours["erank"] == pytest.approx(erank, rel=1e-5)
    chunked = RankStats()
    for part in np.array_split(x, 7):
        chunked.add(torch.tensor(part))
    merged = RankStats().add(torch.tensor(x[:100])).merged(RankStats().add(torch.tensor(x[100:])))
    for stats in (chunked, merged):
        assert stats.measures(center)["pc90"] == pc90
        assert stats.measures(center)["erank"] == pytest.approx(erank, rel=1e-9)
    if center:
        assert 2 < pc90 < 24 and 2 < erank < 24


def test_effective_rank_of_known_spectra():
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    assert effective_rank(basis * 5.0, center=False) == {"pc90": 15, "erank": pytest.approx(16.0), "tokens": 16}
    low = torch.randn(200, 3, generator=torch.Generator().manual_seed(1)) @ basis[:3]       # rank 3
    result = effective_rank(low)
    assert result["pc90"] <= 3 and result["erank"] <= 3 + 1e-6


@pytest.mark.parametrize("changes", [{}, {"norm": "pre", "relative_buckets": 16}])
def test_layer_states_end_with_the_encoder_output(changes: dict):
    cfg = dataclasses.replace(EncoderConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=2,
                                            intermediate_size=64, max_positions=32), **changes)
    torch.manual_seed(0)
    encoder = Encoder(cfg).eval()
    ids = torch.randint(5, 50, (2, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 8:] = False
    with torch.no_grad():
        states = layer_states(encoder, ids, mask)
        assert len(states) == cfg.num_layers + 1
        torch.testing.assert_close(states[0], encoder.embed(ids)[0])
        torch.testing.assert_close(states[-1][mask], encoder(ids, attention_mask=mask)[mask])
        assert not torch.allclose(states[1], states[2])


def test_analyze_rank_end_to_end(kjv_data, tmp_path, capsys):
    mlm = tiny_run_config(kjv_data, steps=3)
    maelm = tiny_run_config(kjv_data, steps=3)
    maelm.objective_name, maelm.objective = "maelm", MAELMConfig(decoder_layers=1)
    for name, cfg in (("mlm", mlm), ("maelm", maelm)):
        train(cfg, tmp_path / name, progress=False)
    out = tmp_path / "analysis"
    code = cli.main(["analyze", "rank", str(tmp_path / "mlm"), str(tmp_path / "maelm"), "--out", str(out),
                     "--batches", "2", "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mlm:" in printed and "maelm:" in printed and "rank.png" in printed

    report = json.loads((out / "rank.json").read_text())
    assert [r["objective"] for r in report["runs"]] == ["mlm", "maelm"]
    assert [r["label"] for r in report["runs"]] == ["mlm", "maelm"]
    D = mlm.model.hidden_size
    for run in report["runs"]:
        assert run["step"] == 3 and run["hidden_size"] == D and len(run["layers"]) == mlm.model.num_layers + 1
        for layer in run["layers"]:
            for kind in ("real", "mask", "all", "clean"):
                assert 1 <= layer[kind]["pc90"] <= D and 1 <= layer[kind]["erank"] <= D
            assert layer["all"]["tokens"] == layer["real"]["tokens"] + layer["mask"]["tokens"]
            assert layer["clean"]["tokens"] == layer["all"]["tokens"]
            assert 0.1 < layer["mask"]["tokens"] / layer["clean"]["tokens"] < 0.2
    first, second = (r["layers"][0] for r in report["runs"])
    assert first["mask"]["tokens"] == second["mask"]["tokens"]        # same blocks, same [MASK] positions
    assert (out / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "rank.md").read_text()
    assert text.count("| layer |") == 2 and "maelm" in text


def test_analyze_rank_reports_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["analyze", "rank", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
