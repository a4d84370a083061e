"""`unimask analyze rank`: how many dimensions the token representations of an encoder use.

    unimask analyze rank runs/mlm runs/maelm [--data DIR] [--out DIR] [--batches N]

Meng et al. 2023 ("Representation Deficiency in Masked Language Modeling", ICLR 2024, arXiv 2302.02060,
the representation-deficiency analysis) show that an MLM encoder spends model dimensions on [MASK]
tokens: on MLM-style input the representations of [MASK] tokens and of real tokens occupy partly
different subspaces, so the real tokens, which are all that fine-tuning ever sees, use fewer
dimensions than the model has. MAE-LM's encoder never sees [MASK] and can spend them on real tokens.

For every run (its latest checkpoint, or a checkpoint directory) this runs the encoder on the
first N x B held-out blocks (the valid split of the data directory; by default the run's own
`data.path`) and measures, per layer (0 = the embedding output, L = the last block's output):

    real   ordinary tokens left unmasked in MLM-style input (mask_prob of them replaced by [MASK])
    mask   the [MASK] tokens of that input
    all    real and mask together (the dimensions the whole corrupted input spans)
    clean  ordinary tokens of the uncorrupted input (what fine-tuning sees; MAE-LM's natural input)

[CLS], [SEP] and padding are left out. Every run of a comparison sees the same blocks and the same
[MASK] positions when they share a data directory and block length. Two effective ranks of the
centred representation matrix X (n x D, one row per token) with singular values s_1 >= s_2 ...:

    pc90    principal components needed for 90% of the variance: min k, sum_{i<=k} s_i^2 >= 0.9 sum s_i^2
    erank   Roy & Vetterli (2007): exp(H(p)), p_i = s_i / sum_j s_j, H the Shannon entropy

Both come from per-layer running sums (n, sum x, X^T X in float64), so memory does not grow with the
number of tokens. Output in --out: rank.json (every figure), rank.md (tables) and rank.png (both
measures per layer, one colour per run, one line style per token kind; matplotlib, Agg backend).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .errors import UserError
from .rundir import claim, sha256_file

KINDS = ("real", "mask", "all", "clean")
PLOTTED = {"real": ("-", "o"), "mask": ("--", "s"), "clean": (":", "^")}   # kind -> line style, marker


# ---- effective rank ---------------------------------------------------------------------------------

def rank_measures(singular_values: Tensor, variance: float = 0.9) -> dict[str, float]:
    """{"pc90": components for `variance` of the variance, "erank": Roy & Vetterli's effective rank}
    from the singular values of a (centred) matrix."""
    s = singular_values.double().clamp(min=0).sort(descending=True).values
    total = float(s.square().sum())
    if total <= 0:
        return {"pc90": 0, "erank": 0.0}
    explained = s.square().cumsum(0) / total
    pc = int((explained < variance - 1e-12).sum()) + 1                      # first k reaching `variance`
    p = s / s.sum()
    p = p[p > 0]
    return {"pc90": min(pc, s.numel()), "erank": float(torch.exp(-(p * p.log()).sum()))}


@dataclass
class RankStats:
    """Running n, sum x and X^T X (float64) of the rows of a representation matrix X (n, D)."""

    n: int = 0
    total: Tensor | None = None                 # (D,)
    gram: Tensor | None = None                  # (D, D)

    def add(self, x: Tensor) -> "RankStats":
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()     # (n, D)
        if self.gram is None:
            self.total, self.gram = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1], x.shape[1])
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.gram += x.T @ x
        return self

    def merged(self, other: "RankStats") -> "RankStats":
        """The statistics of the rows of both matrices."""
        parts = [s for s in (self, other) if s.gram is not None]
        if len(parts) < 2:
            return RankStats(parts[0].n, parts[0].total.clone(), parts[0].gram.clone()) if parts else RankStats()
        return RankStats(self.n + other.n, self.total + other.total, self.gram + other.gram)

    def singular_values(self, center: bool = True) -> Tensor:
        """Singular values of X (minus its column mean when `center`): sqrt(eig(X^T X - n mu mu^T))."""
        if self.gram is None or self.n == 0:
            return torch.zeros(0, dtype=torch.float64)
        g = self.gram
        if center:
            mean = self.total / self.n
            g = g - self.n * torch.outer(mean, mean)
        return torch.linalg.eigvalsh(g).clamp(min=0).sqrt().flip(0)

    def measures(self, center: bool = True) -> dict[str, float]:
        return {**rank_measures(self.singular_values(center)), "tokens": self.n}


def effective_rank(x: Tensor, center: bool = True) -> dict[str, float]:
    """pc90 and erank of an (n, D) matrix, its rows centred when `center` (see the module docstring)."""
    return RankStats().add(x).measures(center)


# ---- per-layer hidden states ----------------------------------------------------------------------

def layer_states(encoder, input_ids: Tensor, attention_mask: Tensor | None = None,
                 position_ids: Tensor | None = None, token_type_ids: Tensor | None = None) -> list[Tensor]:
    """[embedding output, block 1 output, ..., block L output] of `encoder`, each (B, T, D), through its
    public pieces; the last one passes the final LayerNorm of a pre-LN stack, so it equals `encoder(...)`."""
    x, position_ids = encoder.embed(input_ids, position_ids=position_ids, token_type_ids=token_type_ids)
    mask = encoder.attention_inputs(x, position_ids, attention_mask)
    states = [x]
    for layer in encoder.layers:
        x = layer(x, mask)
        states.append(x)
    if encoder.final_norm is not None:
        states[-1] = encoder.final_norm(x)
    return states


# ---- one run ----------------------------------------------------------------------------------------

@dataclass
class RunRank:
    path: str
    label: str
    checkpoint: str
    objective: str
    step: int
    hidden_size: int
    data: str
    stats: list[dict[str, RankStats]] = field(default_factory=list)     # per layer, per kind

    def to_dict(self) -> dict:
        layers = [{"layer": i, **{k: s[k].measures() for k in KINDS}} for i, s in enumerate(self.stats)]
        return {"run": self.path, "label": self.label, "checkpoint": self.checkpoint, "objective": self.objective,
                "step": self.step, "hidden_size": self.hidden_size, "data": self.data, "layers": layers}


def mlm_style_input(mask_prob: float, mask_id: int, special_ids: list[int]):
    """A `corrupt` callable for `eval_batches`: mask_prob of the ordinary tokens become [MASK]."""
    from .objectives import masking

    def corrupt(batch, rng: torch.Generator):
        ids = batch.input_ids                                                          # (B, T)
        real = batch.attention_mask if batch.attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        ordinary = masking.candidate_mask(ids, special_ids) & real                   # (B, T)
        masked = masking.token_mask(ordinary, mask_prob, rng)                        # (B, T)
        return batch.replace(input_ids=ids.masked_fill(masked, mask_id),
                             extras={"original": ids, "ordinary": ordinary, "masked": masked})
    return corrupt


def analyze_run(path: str, label: str, data: str | None, batches: int, batch_size: int, mask_prob: float,
                seed: int, device: torch.device) -> RunRank:
    from .data.default_corpus import resolve_data
    from .data.loader import Blocks, eval_batches
    from .data.store import TokenStore
    from .checkpoint import find_checkpoint, load_encoder
    from .train.checkpoint import load_config, read_meta

    checkpoint = find_checkpoint(path)
    config = load_config(checkpoint)
    encoder, cfg = load_encoder(checkpoint)
    encoder.to(device)
    data_dir = Path(data) if data else resolve_data(config.get("data", {}).get("path", ""))
    store = TokenStore(data_dir, "valid")
    ours, theirs = checkpoint / "tokenizer.json", data_dir / "tokenizer.json"
    if ours.is_file() and theirs.is_file() and sha256_file(ours) != sha256_file(theirs):
        raise UserError(f"{checkpoint} was trained with another tokenizer than {data_dir}; pass --data with "
                        f"a directory prepared with the run's tokenizer (its config's data.path)")
    if store.vocab_size > cfg.vocab_size:
        raise UserError(f"{data_dir} has {store.vocab_size} token ids but {checkpoint} only {cfg.vocab_size} "
                        f"embeddings; pass --data with a directory prepared with the run's tokenizer")
    seq_len = int(config.get("data", {}).get("seq_len", 128))
    if seq_len > cfg.max_positions:
        raise UserError(f"{checkpoint}: data.seq_len {seq_len} exceeds the encoder's max_positions {cfg.max_positions}")
    blocks = Blocks(store, seq_len, full_only=False)
    if len(blocks) == 0:
        raise UserError(f"{data_dir} has an empty valid split; prepare it with a valid fraction above 0")
    specials = [store.special_ids[k] for k in ("pad", "unk", "cls", "sep", "mask")]
    corrupt = mlm_style_input(mask_prob, store.special_ids["mask"], specials)

    result = RunRank(path=str(path), label=label, checkpoint=str(checkpoint),
                     objective=str(config.get("objective_name")),
                     step=int(read_meta(checkpoint)["step"]) if (checkpoint / "meta.json").is_file() else -1,
                     hidden_size=cfg.hidden_size, data=str(data_dir))
    result.stats = [{k: RankStats() for k in KINDS if k != "all"} for _ in range(cfg.num_layers + 1)]
    with torch.no_grad():
        for batch in eval_batches(blocks, batch_size, batches, seed, corrupt):
            batch = batch.to(device)
            ordinary, masked = batch.extras["ordinary"], batch.extras["masked"]
            corrupted = layer_states(encoder, batch.input_ids, batch.attention_mask)
            clean = layer_states(encoder, batch.extras["original"], batch.attention_mask)
            for stats, h, c in zip(result.stats, corrupted, clean):
                stats["real"].add(h[ordinary & ~masked])                        # (n_real, D)
                stats["mask"].add(h[masked])                                    # (n_mask, D)
                stats["clean"].add(c[ordinary])                                 # (n_ordinary, D)
    for stats in result.stats:
        stats["all"] = stats["real"].merged(stats["mask"])
    return result


# ---- reports ----------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    lines = ["# Effective rank of token representations", "",
             f"pc90: principal components for 90% of the variance; erank: Roy & Vetterli effective rank. "
             f"real/mask/all: MLM-style input with {report['settings']['mask_prob']:.0%} of the tokens as [MASK]; "
             f"clean: uncorrupted input.", ""]
    for run in report["runs"]:
        lines += [f"## {run['label']} ({run['objective']}, step {run['step']}, D = {run['hidden_size']})", "",
                  f"checkpoint `{run['checkpoint']}`, data `{run['data']}`", "",
                  "| layer | " + " | ".join([f"{k} pc90" for k in KINDS] + [f"{k} erank" for k in KINDS]) + " |",
                  "|---:" * (1 + 2 * len(KINDS)) + "|"]
        for layer in run["layers"]:
            pcs = " | ".join(str(layer[k]["pc90"]) for k in KINDS)
            eranks = " | ".join(f"{layer[k]['erank']:.1f}" for k in KINDS)
            lines.append(f"| {layer['layer']} | {pcs} | {eranks} |")
        counts = run["layers"][0]
        lines += ["", "tokens per layer: " + ", ".join(f"{k} {counts[k]['tokens']}" for k in KINDS), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(report["runs"]):
        layers = [layer["layer"] for layer in run["layers"]]
        for ax, measure in zip(axes, ("pc90", "erank")):
            for kind, (style, marker) in PLOTTED.items():
                ax.plot(layers, [layer[kind][measure] for layer in run["layers"]], linestyle=style, marker=marker,
                        markersize=4, color=colors[i % len(colors)], label=f"{run['label']} {kind}")
    for ax, title in zip(axes, ("components for 90% of the variance", "effective rank (Roy & Vetterli)")):
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best", handlelength=3.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _labels(paths: list[str]) -> list[str]:
    names = [Path(p).resolve().name for p in paths]
    return [n if names.count(n) == 1 else str(Path(p)) for n, p in zip(names, paths)]


def run_rank(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("the rank plot needs matplotlib: pip install 'unimask[analyze]'")
    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.mask_prob < 1:
        raise UserError("--mask-prob must be in (0, 1)")
    from .runtime import resolve_device
    device = resolve_device(args.device)
    out = Path(args.out)
    with claim(out, "analyze"):
        runs = [analyze_run(p, label, args.data, args.batches, args.batch_size, args.mask_prob, args.seed, device)
                for p, label in zip(args.runs, _labels(args.runs))]
        report = {"settings": {"batches": args.batches, "batch_size": args.batch_size, "mask_prob": args.mask_prob,
                               "seed": args.seed, "variance": 0.9, "centered": True},
                  "runs": [r.to_dict() for r in runs]}
        out.mkdir(parents=True, exist_ok=True)
        (out / "rank.json").write_text(json.dumps(report, indent=2) + "\n")
        text = markdown(report)
        (out / "rank.md").write_text(text + "\n")
        plot(report, out / "rank.png")
    for run in report["runs"]:
        last = run["layers"][-1]
        print(f"{run['label']}: last layer pc90 real {last['real']['pc90']} / mask {last['mask']['pc90']} / "
              f"clean {last['clean']['pc90']} of D = {run['hidden_size']}; "
              f"erank real {last['real']['erank']:.1f} / clean {last['clean']['erank']:.1f}")
    print(f"wrote {out / 'rank.json'}, {out / 'rank.md'} and {out / 'rank.png'}")
    return 0
