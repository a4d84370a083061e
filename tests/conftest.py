"""Shared fixtures: a small prepared corpus from the built-in King James Bible, tiny configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread (read when torch starts, so before any test imports it; subprocesses inherit it): the tests'
# models are tiny, and on cores other programs keep busy several threads wait for each other at every
# operation: the whole suite took 3:44-4:47 with torch's 2 threads on the 2-core development machine
# and 1:35 with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_benchmark(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT ARGS` on one thread, offline, with this checkout's src/ first on the
    path; asserts it exits 0 (showing the tail of its output when not)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when the clone has no ../shared beside it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present: real data is read from ../shared/data beside the repository "
                    "(README, Tests, says where each file comes from)")
    return path


@pytest.fixture(scope="session")
def kjv_data(tmp_path_factory) -> Path:
    """The first 150 chapters of the built-in corpus, prepared with a 1,000-token vocabulary."""
    from unimask.data.default_corpus import kjv_jsonl, write_chapters
    from unimask.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("kjv")
    full = root / "all.txt"
    write_chapters(kjv_jsonl(), full)
    text = root / "kjv150.txt"
    text.write_text("\n\n".join(full.read_text().split("\n\n")[:150]) + "\n")
    out = root / "tokens"
    prepare([text], out, PrepareConfig(vocab_size=1000, valid_fraction=0.05), log=lambda *a, **k: None)
    return out


@pytest.fixture(scope="session", autouse=True)
def modules_cache(tmp_path_factory):
    """transformers copies the remote code of a trust_remote_code load into HF_MODULES_CACHE (read once,
    at import): keep it in a tmp dir rather than the user's cache."""
    try:
        import transformers.dynamic_module_utils as dynamic
    except ImportError:
        yield
        return

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield


def tiny_run_config(data: Path, **train):
    """A 2-layer, 32-wide MLM run on `data` that takes about a second."""
    from unimask.config import RunConfig
    from unimask.data.loader import DataConfig
    from unimask.model.encoder import EncoderConfig
    from unimask.objectives.mlm import MLMConfig
    from unimask.train.loop import TrainConfig

    defaults = dict(steps=8, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, eval_every=0,
                    eval_batches=2, save_every=0, precision="fp32", device="cpu")
    return RunConfig(
        objective_name="mlm", size="tiny",
        model=EncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64),
        objective=MLMConfig(), data=DataConfig(path=str(data), seq_len=32),
        train=TrainConfig(**{**defaults, **train}),
    )


def keyword_rows(n: int, length, first: bool = False) -> list[tuple[str, str]]:
    """(text, label) rows any working fine-tuning loop learns: `length(i)` random KJV words, and every
    other row says 'moses' (label "yes"), at the start with `first`, else at a random place."""
    import torch

    g = torch.Generator().manual_seed(0)
    words = "the lord said unto him and they went up into land of egypt with all people".split()
    rows = []
    for i in range(n):
        text = [words[j] for j in torch.randint(len(words), (length(i),), generator=g).tolist()]
        if i % 2:
            text[0 if first else int(torch.randint(len(text), (1,), generator=g))] = "moses"
        rows.append((" ".join(text), "yes" if i % 2 else "no"))
    return rows


@pytest.fixture(scope="session")
def classifier(kjv_data, tmp_path_factory) -> tuple[Path, Path]:
    """(fine-tuned output, its dev.tsv): a tiny MLM run fine-tuned to tell whether a text says 'moses'."""
    from unimask.tasks.finetune import FinetuneConfig, load_pretrained, sweep
    from unimask.tasks.glue import user_task
    from unimask.train.loop import train

    root = tmp_path_factory.mktemp("predict")
    train(tiny_run_config(kjv_data, steps=2, save_every=2), root / "mlm", progress=False)
    rows = keyword_rows(400, lambda i: 6 + i % 5, first=True)
    for name, part in (("train.tsv", rows[:320]), ("dev.tsv", rows[320:])):
        (root / name).write_text("id\ttext\tlabel\n" + "".join(f"r{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(part)))
    task = user_task("classify", str(root / "train.tsv"), str(root / "dev.tsv"), "text", "label")
    cfg = FinetuneConfig(lrs=(3e-3,), seeds=(1,), epochs=2, batch_size=16, precision="fp32", max_length=24)
    sweep(task, load_pretrained(root / "mlm"), cfg, root / "ft", progress=False)
    return root / "ft", root / "dev.tsv"
