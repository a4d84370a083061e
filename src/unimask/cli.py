"""unimask: pretrain BERT-style encoders (MLM, ELECTRA, COCO-LM, MAE-LM, UniLMv2 PMLM), then fine-tune,
evaluate and export them. Start with `unimask pretrain`, the 5-minute default job; `unimask COMMAND
--help` lists a command's flags with their defaults. `python -m unimask ...` works too (e.g. under
torchrun).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from pathlib import Path

from .errors import Stopped, UserError


class _ListRecipes(argparse.Action):
    """`--list-recipes`: print each recipe with its one-line description and exit (no torch import)."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .recipes import RECIPES, describe
        width = max(map(len, RECIPES))
        print("\n".join(f"{name:<{width}}  {describe(name)}" for name in RECIPES))
        parser.exit()


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from .recipes import RECIPES

    p.add_argument("--recipe", choices=list(RECIPES), default=None, metavar="NAME",
                   help="a named recipe, see --list-recipes (default: demo; with --resume, the run's own config)")
    p.add_argument("--list-recipes", action=_ListRecipes, help="list the recipes with a line about each, and exit")
    p.add_argument("--data", default=None, metavar="DIR", help="a directory written by `unimask prepare` "
                   "(default: the built-in King James Bible corpus, prepared on first use)")
    p.add_argument("--out", default=None, metavar="DIR", help="the run directory (default: runs/RECIPE)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 --set model.norm=pre")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights: a unimask run or checkpoint, or a transformers BERT, RoBERTa "
                        "or ELECTRA (discriminator) directory; the architecture comes from PATH, the optimizer "
                        "and step start fresh (prepare --data with `unimask prepare --tokenizer PATH`)")
    p.add_argument("--init-generator", default=None, metavar="PATH",
                   help="with --init, for electra and cocolm: start their generator from a transformers ELECTRA "
                        "generator directory (ElectraForMaskedLM); its width and depth set the generator's shape")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or f"runs/{args.recipe or 'demo'}")


def _pretrain(args: argparse.Namespace) -> int:
    from . import config as config_mod
    from .recipes import RECIPES
    from .train import checkpoint as ckpt_mod
    from .train.loop import train

    out = _run_dir(args)
    latest = ckpt_mod.latest_checkpoint(out) if args.resume and ckpt_mod.list_checkpoints(out) else None
    if args.resume and latest is None:
        raise UserError(f"--resume: {out} has no checkpoint to continue; drop --resume to start a new run")
    if latest is not None and args.recipe is None:
        ckpt_mod.verify(latest)
        cfg = config_mod.from_dict(ckpt_mod.load_config(latest))
    else:
        cfg = RECIPES[args.recipe or "demo"]()
    if args.data is not None:
        cfg.data.path = args.data
    if args.init_generator is not None and args.init is None:
        raise UserError("--init-generator needs --init: the generator shares the encoder's embeddings; pass the "
                        "discriminator released with it as --init")
    init_cfg, generator_fields = None, {}
    if args.init is not None and latest is None:     # a run with a checkpoint resumes from it, not from --init
        from .train import init as init_mod
        init = init_mod.read_init(args.init)
        init_cfg, cfg.model, cfg.init = init.config, init.config, str(Path(args.init).expanduser().resolve())
        cfg.init_family = init.family                # `unimask export` writes the run back in this family
        if args.init_generator is not None:
            generator = init_mod.read_init_generator(args.init_generator, init.config, init.tokenizer)
            generator_fields = init_mod.generator_fields(cfg.objective_name, generator, init.config)
            cfg.objective = dataclasses.replace(cfg.objective, **generator_fields)
            cfg.init_generator = str(Path(args.init_generator).expanduser().resolve())
    cfg = config_mod.apply_overrides(cfg, args.overrides)
    if init_cfg is not None:
        from .train.init import check_model_overrides, check_objective_overrides
        check_model_overrides(init_cfg, cfg.model, args.init)
        check_objective_overrides(generator_fields, cfg.objective, args.init_generator)
    train(cfg, out, resume=args.resume, progress=not args.quiet)
    return 0


# ---- the other commands' flags (their code imports torch; these do not) --------------------------

def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="a run directory (its latest checkpoint), a checkpoint, or a `unimask finetune` output")
    p.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    p.add_argument("--to", choices=["hf"], default="hf", help="target format: hf (Hugging Face transformers)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--family", choices=["bert", "electra", "roberta"], default=None,
                   help="the transformers family to write (default: the one --init came from, else BERT; remote code "
                        "where none holds the encoder)")
    p.add_argument("--bare", action="store_true",
                   help="write the bare encoder class (BertModel, RobertaModel, ElectraModel, UnimaskModel) without the "
                        "objective's head; a BERT continued from a released one keeps its pooler")


def bench_common_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `unimask bench` shares with benchmarks/hf_compare.py and hf_electra_compare.py."""
    from .model.sizes import ENCODER_SIZES
    from .runtime import PRECISIONS
    p.add_argument("--size", choices=list(ENCODER_SIZES), default="small", help="encoder size preset")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    p.add_argument("--dtype", choices=[name for name in PRECISIONS if name != "auto"], default="bf16",
                   help="fp32: no autocast; bf16: the trainer's bf16 autocast (a CPU without bf16 instructions "
                        "times fp32 instead, with a warning)")
    p.add_argument("--vocab", type=int, default=30522, help="vocabulary size")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when there is one")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the random batches")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="on the CPU, glibc keeps freed memory mapped (no page faults on reuse) as the trainer "
                        "does by default (train.keep_freed_memory; see train/malloc.py)")
    p.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                   help="before each timed block, wait up to SECONDS until other processes leave the CPUs "
                        "idle (shared machines; 0: never wait)")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", default="mlm", metavar="NAME",
                   help="the objective to time, a name of `unimask pretrain --list-recipes` (mlm, electra, ...)")
    bench_common_arguments(p)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each Transformer block, as train.compile=true does")
    p.add_argument("--attention", choices=["auto", "sdpa", "flex"], default="auto",
                   help="the attention kernel, as train.attention (auto: flex_attention for a relative bias or "
                        "a layout on CUDA, SDPA otherwise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a model.* or objective.* field, e.g. --set objective.decoder_layers=2")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--against", default=None, metavar="NAME",
                       help="also time this objective (same encoder, model.* overrides) interleaved with the first "
                            "and print a step-cost ratio line, e.g. --objective pmlm --against mlm")
    again.add_argument("--compare-compile", action="store_true",
                       help="time the objective with compile on and off, interleaved, and print a ratio line "
                            "(compiled step / eager step) with the compile time: the compiled engine's first step "
                            "minus its median step")


def _rank_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their latest checkpoint) or checkpoints")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="a prepared data directory whose valid split is read (default: each run's data.path)")
    p.add_argument("--out", default="runs/analyze/rank", metavar="DIR", help="output directory")
    p.add_argument("--batches", type=int, default=8, help="held-out batches per run")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per batch")
    p.add_argument("--mask-prob", type=float, default=0.15, help="fraction of tokens shown as [MASK]")
    p.add_argument("--seed", type=int, default=0, help="seed of the [MASK] positions")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when there is one")


ANALYSES = {
    # name: (help, flags, run)
    "rank": ("per-layer effective rank of real-token and [MASK] representations (Meng et al. 2023)",
             _rank_arguments, "unimask.analyze:run_rank"),
}


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name, (help_text, add, run) in ANALYSES.items():
        q = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        add(q)
        q.set_defaults(run=run)


def _plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="pretraining run directories (their metrics.jsonl)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the PNG to write (default: RUN/curves.png for one run, runs/curves.png for several)")


COMMANDS = {
    # name: (help, its flags, its run function, "module:function"); only the chosen command's are imported
    "prepare": ("tokenize raw text into memory-mapped token arrays",
                "unimask.data.prepare:add_arguments", "unimask.data.prepare:run"),
    "pretrain": ("pretrain an encoder with a recipe (no arguments: the 5-minute default job)",
                 _pretrain_arguments, _pretrain),
    "finetune": ("fine-tune and evaluate an encoder on GLUE, SQuAD, seq2seq generation or your own labelled data",
                 "unimask.tasks.options:finetune_arguments", "unimask.tasks.finetune:run"),
    "predict": ("run a fine-tuned model on new inputs: labels and probabilities, SQuAD answers, GLUE submission "
                "files, generated text", "unimask.tasks.options:predict_arguments", "unimask.tasks.predict:run"),
    "probe": ("frozen-encoder probe: logistic regression on each layer's [CLS] and mean features",
              "unimask.tasks.options:probe_arguments", "unimask.tasks.probe:run"),
    "generate": ("generate text with a model fine-tuned by `finetune --task seq2seq` (beam search)",
                 "unimask.tasks.options:generate_arguments", "unimask.tasks.generate:run"),
    "report": ("put the fine-tuning results of several models side by side",
               "unimask.tasks.report:add_arguments", "unimask.tasks.report:run"),
    "export": ("export a checkpoint to Hugging Face transformers", _export_arguments, "unimask.export.hf:run"),
    "arena": ("pretrain several objectives at equal compute and score them with one protocol (probe, fine-tuning)",
              "unimask.arena:add_arguments", "unimask.arena:run"),
    "bench": ("measure training throughput, FLOPs, MFU and memory", _bench_arguments, "unimask.bench:run"),
    "analyze": ("diagnose checkpoints: effective rank of token representations per layer", _analyze_arguments, None),
    "plot": ("plot the loss and accuracy curves of pretraining runs into a PNG (needs matplotlib)",
             _plot_arguments, "unimask.plot:run"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, where it has one that says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("(default" in text or not action.option_strings or default is None or default is False
                or default == argparse.SUPPRESS or isinstance(default, list) and not default):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _resolve(where):
    """A function, or the function named by "module:function" (imported now)."""
    if not isinstance(where, str):
        return where
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s flags only: other commands' modules are never imported, and no
    command's flags import torch, so `unimask CMD --help` answers at once."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="unimask", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"unimask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:
            _resolve(add)(p)
            if run is not None:                 # analyze: each analysis sets its own
                p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, args.command, unknown)
    try:
        return int(_resolve(args.run)(args) or 0)
    except UserError as e:
        print(f"unimask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:                      # pretrain on SIGTERM / Ctrl-C: a checkpoint was saved
        if not e.quiet:
            print(f"unimask {args.command}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"unimask {args.command}: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """argparse's exit (status 2), with the subcommand named and a near flag suggested."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [s for a in sub._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
    near = difflib.get_close_matches(unknown[0].split("=")[0], flags, 1) if unknown[0].startswith("-") else []
    hint = f" (did you mean {near[0]}?)" if near else f"; see unimask {command} --help"
    sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _after_interrupt(args: argparse.Namespace) -> str:
    """What a command interrupted by Ctrl-C kept and what to run next (each writes its output only when
    done). Inside pretraining's loop Ctrl-C saves a checkpoint and ends in `Stopped` instead; this is
    for Ctrl-C before the loop (loading data, building the model) or a second Ctrl-C that aborts."""
    if args.command == "pretrain":
        from .train import checkpoint as ckpt_mod
        out = _run_dir(args)
        latest = ckpt_mod.latest_checkpoint(out) if ckpt_mod.list_checkpoints(out) else None
        if latest is None:
            return f"no checkpoint was written yet, so {out} cannot be resumed; run the command again to start over"
        return (f"the last checkpoint, {latest}, is intact; continue with "
                f"`unimask pretrain --out {out} --resume`")
    kept = {"finetune": "no output was written (a sweep's directory appears only when it has finished)",
            "predict": "no output was written", "generate": "no output file was written",
            "bench": "no record was written",
            "arena": f"the finished runs and scores in {getattr(args, 'out', 'the arena directory')} are kept"}
    return kept.get(args.command, "nothing was written (outputs appear only when complete)") + "; run it again"


if __name__ == "__main__":
    sys.exit(main())
