"""Prepare, on the development machine, what `gpu_check.py` needs on a lent GPU machine and cannot
find there: the shared data (../shared beside the checkout does not travel to it) and the Python
packages its image lacks (rouge-score and nltk for the seq2seq scores; the image has torch,
transformers, tokenizers, safetensors, scikit-learn, scipy and sacrebleu). Nothing can be fetched on
that machine, so everything goes into one git-ignored folder, `gpu_pack/` (under the 64 MiB a run
may carry), which the device call names in `carry`:

    python benchmarks/gpu_check_pack.py                 # here, once: writes gpu_pack/ and prints the command

and then the device call, with `carry: ["gpu_pack"]` (the command it prints):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu_pack/wheels/*.whl &&
    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_check.py --device cuda --out $OUT \
        --work /tmp/gpu_check_work --shared gpu_pack/shared --budget-minutes 7

The run writes gpu_check.json and gpu_check.md into $OUT (what comes back) and its corpus, data and
checkpoints into --work (which does not); the package is imported from src/ (the image does not have
it installed).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = ("nltk==3.9.1", "rouge-score==0.1.2")      # pure Python: one wheel fits the GPU machine's Python 3.12
QG_FILES = ("src-dev.txt", "tgt-dev.txt", "src-test.txt")
SST2_FILES = ("train.tsv", "dev.tsv")
COMMAND = ("python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu_pack/wheels/*.whl && "
           "PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_check.py --device cuda --out $OUT "
           "--work /tmp/gpu_check_work --shared gpu_pack/shared --budget-minutes 7")


def pack_data(shared: Path, out: Path, corpus_chars: int) -> None:
    """The Wikipedia sample's first `corpus_chars` characters and a little more (the check reads on to
    the end of an article), SST-2's train and dev, and the question-generation files the check reads."""
    source = shared / "corpus" / "enwiki_sample.txt.gz"
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rt", encoding="utf-8") as f:
        text = f.read(corpus_chars + 500_000)
    with gzip.open(out / "corpus" / "enwiki_sample.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text[:text.rfind("\n") + 1])                          # whole lines only
    for folder, names in (("glue/SST-2", SST2_FILES), ("qg", QG_FILES)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(shared / folder / name, out / folder / name)


def pack_wheels(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), *WHEELS]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    from gpu_check import FULL

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=REPO / "gpu_pack")
    args = p.parse_args()
    if not (args.shared / "corpus" / "enwiki_sample.txt.gz").exists():
        sys.exit(f"gpu_check_pack: {args.shared} has no corpus/enwiki_sample.txt.gz; pass --shared DIR "
                 "(the shared data folder)")
    pack_data(args.shared, args.out / "shared", FULL.corpus_chars)
    pack_wheels(args.out / "wheels")
    print(f"wrote {args.out} ({size_mib(args.out):.1f} MiB); on the GPU machine, with carry [\"gpu_pack\"]:\n"
          f"  {COMMAND}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
