"""unimask prepare | pretrain | finetune | predict | probe | generate | report | export | bench | analyze  (also `python -m unimask ...`, e.g. under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from pathlib import Path

from .errors import Stopped, UserError


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    from .recipes import RECIPES

    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a named recipe (default: demo; with --resume, the run's own config)")
    p.add_argument("--data", default=None, help="a directory written by `unimask prepare` "
                   "(default: the built-in King James Bible corpus, prepared on first use)")
    p.add_argument("--out", default=None, help="the run directory (default: runs/RECIPE)")
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


def _pretrain(args: argparse.Namespace) -> int:
    from . import config as config_mod
    from .recipes import RECIPES
    from .train import checkpoint as ckpt_mod
    from .train.loop import train

    out = Path(args.out or f"runs/{args.recipe or 'demo'}")
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


COMMANDS = {
    # name: (help, module with add_arguments/run, or (add_arguments, run) here)
    "prepare": ("tokenize raw text into memory-mapped token arrays", "unimask.data.prepare"),
    "pretrain": ("pretrain an encoder with a recipe", (_pretrain_arguments, _pretrain)),
    "finetune": ("fine-tune and evaluate an encoder on GLUE, SQuAD, seq2seq generation or your own labelled data", "unimask.tasks.finetune"),
    "predict": ("run a fine-tuned model on new inputs: labels and probabilities, SQuAD answers, GLUE submission "
                "files, generated text", "unimask.tasks.predict"),
    "probe": ("frozen-encoder probe: logistic regression on each layer's [CLS] and mean features", "unimask.tasks.probe"),
    "generate": ("generate text with a model fine-tuned by `finetune --task seq2seq` (beam search)", "unimask.tasks.generate"),
    "report": ("put the fine-tuning results of several models side by side", "unimask.tasks.report"),
    "export": ("export a checkpoint to Hugging Face transformers", "unimask.export.hf"),
    "arena": ("pretrain several objectives at equal compute and score them with one protocol (probe, fine-tuning)",
              "unimask.arena"),
    "bench": ("measure training throughput, FLOPs, MFU and memory", "unimask.bench"),
    "analyze": ("diagnose checkpoints: effective rank of token representations per layer", "unimask.analyze"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen command's module is imported (start-up stays fast, heavy imports stay lazy)."""
    parser = argparse.ArgumentParser(prog="unimask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, impl) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        module = None if isinstance(impl, tuple) else importlib.import_module(impl)
        add, run = impl if module is None else (module.add_arguments, module.run)
        add(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    try:
        return int(args.run(args) or 0)
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


def _after_interrupt(args: argparse.Namespace) -> str:
    """What a command interrupted by Ctrl-C kept and what to run next (each writes its output only when
    done). Inside pretraining's loop Ctrl-C saves a checkpoint and ends in `Stopped` instead; this is
    for Ctrl-C before the loop (loading data, building the model) or a second Ctrl-C that aborts."""
    if args.command == "pretrain":
        from .train import checkpoint as ckpt_mod
        out = Path(args.out or f"runs/{args.recipe or 'demo'}")
        latest = ckpt_mod.latest_checkpoint(out) if ckpt_mod.list_checkpoints(out) else None
        if latest is None:
            return f"no checkpoint was written yet, so {out} cannot be resumed; run the command again to start over"
        return (f"the last checkpoint, {latest}, is intact; continue with "
                f"`unimask pretrain --out {out} --resume`")
    kept = {"finetune": "no output was written (a sweep's directory appears only when it has finished)",
            "predict": "no output was written", "generate": "no output file was written",
            "bench": "no record was written"}
    return kept.get(args.command, "nothing was written (outputs appear only when complete)") + "; run it again"


if __name__ == "__main__":
    sys.exit(main())
