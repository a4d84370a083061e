"""The remote-code writer: encoders that transformers' BERT cannot hold, as a directory that
`AutoModel.from_pretrained(dir, trust_remote_code=True)` loads (transformers' "Customizing models"
guide: a config class and a modeling file in the directory, named by config.json's `auto_map`).

Pre-LN encoders, encoders without absolute positions and encoders with the T5 relative position bias
(COCO-LM, UniLMv2) go here; everything BERT can hold keeps exporting as native BERT (hf.py). Like the
BERT export this is a rename table per part plus a parity test (DESIGN.md section 8, rule 9;
tests/test_export_remote.py): the modeling file is the transformers-side mirror of model/encoder.py.

Files `write_remote_model` puts into a directory (hf.write_directory adds the tokenizer files):
    config.json          UnimaskConfig (model_type "unimask"): the encoder config under BERT's field
                         names, `auto_map` (every Auto class modeling_unimask.py serves) and
                         `architectures` (the one class whose weights are all here); with a sentence
                         head also id2label/label2id, problem_type and classifier_pooling
    model.safetensors    the renamed tensors: exactly the keys `save_pretrained` writes (the tied MLM
                         decoder is not written, as in the BERT export)
    modeling_unimask.py  export/modeling_unimask.py, copied; it imports only torch and transformers
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..files import save_weights
from ..model.encoder import Encoder, EncoderConfig
from ..model.heads import LMHead
from ..checkpoint import fit_state
from ..model.families import BERT_TO_ENCODER_CONFIG, ENCODER_TO_BERT, LM_HEAD_TO_BERT, rename
from .hf import check_bert_compatible

MODELING_FILE = Path(__file__).with_name("modeling_unimask.py")
"""The remote code, copied into every directory under its own name (config.json's auto_map names it)."""

ENCODER_TO_REMOTE_CONFIG: dict[str, str] = {
    **{ours: theirs for theirs, ours in BERT_TO_ENCODER_CONFIG.items()},
    "norm": "norm", "absolute_positions": "absolute_positions",
    "relative_buckets": "relative_buckets", "relative_max_distance": "relative_max_distance",
}
"""`EncoderConfig` fields -> `UnimaskConfig` fields: BERT's names where BERT has the field."""

RELATIVE_BIAS_TO_REMOTE: tuple[tuple[str, str], ...] = (
    (r"relative_bias\.table\.weight", r"encoder.relative_attention_bias.weight"),
)
"""The shared (buckets, heads) table, under T5's name."""

PRE_LN_TO_REMOTE: tuple[tuple[str, str], ...] = (
    (r"layers\.(\d+)\.attn_norm\.(weight|bias)", r"encoder.layer.\1.attention.LayerNorm.\2"),
    (r"layers\.(\d+)\.mlp_norm\.(weight|bias)", r"encoder.layer.\1.intermediate.LayerNorm.\2"),
    (r"final_norm\.(weight|bias)", r"LayerNorm.\1"),
)
"""Pre-LN LayerNorms sit before attention, before the FFN and after the last block: the names of
transformers' RoBERTa-PreLayerNorm, not the post-LN positions BERT's names stand for."""

ENCODER_TO_REMOTE: dict[str, tuple[tuple[str, str], ...]] = {
    "post": (*ENCODER_TO_BERT, *RELATIVE_BIAS_TO_REMOTE),
    "pre": (*PRE_LN_TO_REMOTE, *ENCODER_TO_BERT, *RELATIVE_BIAS_TO_REMOTE),  # the first matching rule wins
}
"""`EncoderConfig.norm` -> unimask `Encoder` names -> `UnimaskModel` names (heads prefix them with "unimask.")."""

CLASSIFIER_TO_REMOTE: tuple[tuple[str, str], ...] = (
    (r"dense\.(weight|bias)", r"classifier.dense.\1"),
    (r"out\.(weight|bias)", r"classifier.out_proj.\1"),
)
"""tasks/glue.py `ClassificationHead` names -> `UnimaskForSequenceClassification` names (RoBERTa's)."""

QA_HEAD_TO_REMOTE: tuple[tuple[str, str], ...] = ((r"(weight|bias)", r"qa_outputs.\1"),)
"""tasks/squad.py's span head, an nn.Linear(hidden, 2) -> `UnimaskForQuestionAnswering` names (BERT's)."""

HEAD_ARCHITECTURES: dict[str, str] = {
    "lm_head_state": "UnimaskForMaskedLM",
    "classifier": "UnimaskForSequenceClassification",
    "qa_head_state": "UnimaskForQuestionAnswering",
}
"""`write_remote_model` head argument -> the architecture it exports as (no head: "UnimaskModel")."""

POOLINGS = ("cls", "mean")
CLASSIFIER_KEYS = {"state", "labels", "pooling", "dropout"}


def needs_remote_code(cfg: EncoderConfig) -> bool:
    """Whether an encoder of `cfg` needs the remote-code export: transformers' BERT cannot hold it
    (pre-LN, no absolute positions, or a relative position bias; `hf.check_bert_compatible`)."""
    try:
        check_bert_compatible(cfg)
    except UserError:
        return True
    return False


def _classifier(classifier: dict, hidden_size: int) -> tuple[dict[str, Tensor], dict]:
    """Check a classifier description; returns its state and the UnimaskConfig fields it sets."""
    if not isinstance(classifier, dict) or "state" not in classifier or set(classifier) - CLASSIFIER_KEYS:
        raise UserError(f"classifier must be a dict with 'state', 'labels', 'pooling' (and optionally 'dropout'), "
                        f"not {sorted(classifier) if isinstance(classifier, dict) else type(classifier).__name__}")
    state, labels, pooling = classifier["state"], classifier.get("labels"), classifier.get("pooling", "cls")
    if pooling not in POOLINGS:
        raise UserError(f"classifier pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    if labels is not None and (len(labels) < 2 or len(set(map(str, labels))) != len(labels)):
        raise UserError(f"classifier labels must be two or more distinct names, not {list(labels)}; "
                        "pass None for a regression head")
    expected = 1 if labels is None else len(labels)
    outputs = state["out.weight"].shape[0] if "out.weight" in state else expected  # else fit_state names what is missing
    if outputs != expected:
        what = "a regression head (labels None) has 1" if labels is None else f"{len(labels)} labels need {len(labels)}"
        raise UserError(f"the classifier has {outputs} outputs but {what}; pass the labels it was trained with")
    with torch.device("meta"):
        head = nn.ModuleDict({"dense": nn.Linear(hidden_size, hidden_size), "out": nn.Linear(hidden_size, expected)})
    fit_state(head, dict(state), "the classifier weights")
    fields: dict = {"classifier_pooling": pooling, "classifier_dropout": classifier.get("dropout")}
    if labels is None:
        fields.update(num_labels=1, problem_type="regression")
    else:
        labels = [str(label) for label in labels]
        fields.update(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
                      problem_type="single_label_classification")
    return state, fields


def write_remote_model(
    directory: Path,
    cfg: EncoderConfig,
    encoder_state: dict[str, Tensor],
    *,
    lm_head_state: dict[str, Tensor] | None = None,
    classifier: dict | None = None,
    qa_head_state: dict[str, Tensor] | None = None,
) -> str:
    """Write config.json, model.safetensors and modeling_unimask.py into `directory` (see the module
    docstring); returns the architecture ("UnimaskModel", "UnimaskForMaskedLM", ...).

    `encoder_state`: an `Encoder` state dict; at most one head: `lm_head_state` an `LMHead` state dict
    (dense.*, norm.*, bias), `classifier` {"state": a tasks/glue.py ClassificationHead state dict
    (dense.*, out.*), "labels": the class names in output order or None for regression, "pooling":
    "cls" | "mean", optionally "dropout"}, `qa_head_state` the Linear(hidden, 2) span head's state dict.
    Any Encoder config is accepted; hf.export_checkpoint sends only what BERT cannot hold.
    """
    heads = {name: head for name, head in (("lm_head_state", lm_head_state), ("classifier", classifier),
                                           ("qa_head_state", qa_head_state)) if head is not None}
    if len(heads) > 1:
        raise UserError(f"a directory holds one head, not {' and '.join(heads)}; export each to its own directory")
    try:
        from .modeling_unimask import AUTO_MAP, UnimaskConfig
    except ImportError:
        raise UserError("exporting to transformers needs the transformers package: pip install 'unimask[hf]'") from None
    with torch.device("meta"):
        fit_state(Encoder(cfg), encoder_state, "the encoder weights")
    architecture = HEAD_ARCHITECTURES[next(iter(heads))] if heads else "UnimaskModel"
    fields = {theirs: getattr(cfg, ours) for ours, theirs in ENCODER_TO_REMOTE_CONFIG.items()}
    tensors = rename(encoder_state, ENCODER_TO_REMOTE[cfg.norm], "unimask." if heads else "")
    if lm_head_state is not None:
        with torch.device("meta"):
            fit_state(LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps), lm_head_state, "the MLM head weights")
        tensors.update(rename(lm_head_state, LM_HEAD_TO_BERT))
    if classifier is not None:
        state, classifier_fields = _classifier(classifier, cfg.hidden_size)
        fields.update(classifier_fields)
        tensors.update(rename(state, CLASSIFIER_TO_REMOTE))
    if qa_head_state is not None:
        with torch.device("meta"):
            fit_state(nn.Linear(cfg.hidden_size, 2), qa_head_state, "the question-answering head weights")
        tensors.update(rename(qa_head_state, QA_HEAD_TO_REMOTE))
    dtype = str(encoder_state["embeddings.word.weight"].dtype).removeprefix("torch.")
    config = UnimaskConfig(**fields, architectures=[architecture], auto_map=dict(AUTO_MAP), dtype=dtype)
    _check_names(architecture, config, tensors)
    config.to_json_file(Path(directory) / "config.json")
    save_weights(tensors, Path(directory) / "model.safetensors")
    shutil.copyfile(MODELING_FILE, Path(directory) / MODELING_FILE.name)
    return architecture


def _check_names(architecture: str, config, tensors: dict[str, Tensor]) -> None:
    """The renamed tensors must be exactly the modeling file's parameters, less the tied decoder."""
    from . import modeling_unimask

    model_class = getattr(modeling_unimask, architecture)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    for tied in model_class._tied_weights_keys or {}:
        expected.pop(tied, None)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise RuntimeError(f"the rename tables do not produce {architecture}'s parameters ({', '.join(wrong[:3])}): export bug")
