"""Typed `--set` overrides, their one-line errors, and the config.json round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unimask.objectives import OBJECTIVES

from unimask.config import RunConfig, apply_overrides, from_dict, parse_value, sized
from unimask.errors import UserError
from unimask.model.sizes import ENCODER_SIZES
from unimask.recipes import RECIPES


def demo() -> RunConfig:
    return RECIPES["demo"]()


def test_overrides_parse_each_field_type():
    cfg = apply_overrides(demo(), [
        "train.steps=7",                       # int
        "train.lr=3e-4",                       # float
        "train.min_lr_ratio=1",                # float written as an int
        "train.compile=true",                  # bool
        "model.relative_buckets=32",
        "model.absolute_positions=no",         # bool (valid because relative positions are on)
        "model.norm=pre",                      # Literal
        "objective.masking=whole_word",        # Literal on the objective's own config
        "data.path=/tmp/some where",           # str, spaces kept
        "objective.mask_prob = 0.2",           # spaces around '=' are stripped
    ])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 3e-4 and cfg.train.min_lr_ratio == 1.0 and isinstance(cfg.train.min_lr_ratio, float)
    assert cfg.train.compile is True
    assert cfg.model.absolute_positions is False and cfg.model.relative_buckets == 32
    assert cfg.model.norm == "pre" and cfg.objective.masking == "whole_word"
    assert cfg.data.path == "/tmp/some where" and cfg.objective.mask_prob == 0.2
    # untouched fields keep the recipe's values, and the input config is not mutated
    assert cfg.train.batch_size == demo().train.batch_size
    base = demo()
    apply_overrides(base, ["train.steps=1"])
    assert base.train.steps == demo().train.steps


@pytest.mark.parametrize("text,value", [("true", True), ("1", True), ("Yes", True), ("on", True),
                                        ("false", False), ("0", False), ("NO", False), ("off", False)])
def test_bool_spellings(text, value):
    assert parse_value(text, bool, "train.compile") is value


def test_optional_and_unsupported_types():
    assert parse_value("none", int | None, "x.y") is None
    assert parse_value("5", int | None, "x.y") == 5
    with pytest.raises(UserError, match="cannot be set"):
        parse_value("[1]", list, "x.y")


def test_overrides_are_checked_together_not_one_by_one():
    """A valid end state must not depend on the order of the --set flags."""
    for sets in (["model.absolute_positions=false", "model.relative_buckets=32"],
                 ["model.relative_buckets=32", "model.absolute_positions=false"]):
        cfg = apply_overrides(demo(), sets)
        assert (cfg.model.absolute_positions, cfg.model.relative_buckets) == (False, 32)
    cfg = apply_overrides(demo(), ["model.num_heads=3", "model.hidden_size=96"])
    assert (cfg.model.num_heads, cfg.model.hidden_size) == (3, 96)
    with pytest.raises(UserError, match="not divisible"):          # an invalid end state still fails
        apply_overrides(demo(), ["model.num_heads=3"])
    cfg = apply_overrides(demo(), ["train.steps=5", "train.steps=9"])   # the last assignment wins
    assert cfg.train.steps == 9


def test_size_resets_the_preset_but_keeps_other_model_fields():
    cfg = apply_overrides(demo(), ["model.norm=pre", "model.dropout=0.3", "model.hidden_size=64",
                                   "model.num_heads=2", "size=base"])
    # size goes first whatever its position, then model.* fields override the preset
    assert cfg.size == "base"
    assert cfg.model.num_layers == ENCODER_SIZES["base"]["num_layers"]
    assert cfg.model.intermediate_size == ENCODER_SIZES["base"]["intermediate_size"]
    assert cfg.model.hidden_size == 64 and cfg.model.num_heads == 2
    assert cfg.model.norm == "pre" and cfg.model.dropout == 0.3
    plain = apply_overrides(apply_overrides(demo(), ["model.norm=pre"]), ["size=base"])
    assert dataclasses.asdict(plain.model) == dataclasses.asdict(sized("base", norm="pre"))
    with pytest.raises(UserError, match="unknown size 'huge'"):
        apply_overrides(demo(), ["size=huge"])


def test_objective_name_resets_the_objective_config():
    cfg = apply_overrides(demo(), ["objective.mask_prob=0.3", "objective_name=mlm"])
    assert cfg.objective_name == "mlm"
    assert cfg.objective.mask_prob == 0.3            # objective_name is applied first
    fresh = apply_overrides(apply_overrides(demo(), ["objective.mask_prob=0.3"]), ["objective_name=mlm"])
    assert fresh.objective.mask_prob == 0.15
    with pytest.raises(UserError, match="objective_name=bart"):
        apply_overrides(demo(), ["objective_name=bart"])


def one_line_error(sets: list[str]) -> str:
    with pytest.raises(UserError) as info:
        apply_overrides(demo(), sets)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_errors_are_one_line_and_helpful():
    msg = one_line_error(["trian.lr=3e-4"])
    assert "trian.lr" in msg and "did you mean train" in msg
    msg = one_line_error(["train.stepz=3"])
    assert "train.stepz" in msg and "did you mean train.steps" in msg
    msg = one_line_error(["train.steps=abc"])
    assert "train.steps=abc" in msg and "int" in msg
    msg = one_line_error(["train.lr=fast"])
    assert "train.lr=fast" in msg and "float" in msg
    msg = one_line_error(["model.norm=middle"])
    assert "model.norm=middle" in msg and "post" in msg and "pre" in msg
    msg = one_line_error(["train.compile=maybe"])
    assert "bool" in msg
    msg = one_line_error(["train.steps"])
    assert "KEY=VALUE" in msg
    msg = one_line_error(["=3"])
    assert "KEY=VALUE" in msg
    msg = one_line_error(["train=3"])
    assert "unknown config key" in msg
    msg = one_line_error(["train.steps=0"])                          # the component's own validation
    assert "steps must be at least 1" in msg
    msg = one_line_error(["objective.mask_prob=1.5"])
    assert "mask_prob" in msg
    for bad, named in [("model.hidden_size=-4", "hidden_size"), ("model.num_layers=0", "num_layers"),
                       ("model.dropout=1.5", "dropout"), ("model.pad_token_id=-1", "pad_token_id"),
                       ("model.layer_norm_eps=0", "layer_norm_eps"), ("model.relative_buckets=-2", "relative_buckets")]:
        msg = one_line_error([bad])                                 # the encoder's sizes and rates are checked too
        assert named in msg and "\n" not in msg, bad


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_round_trip_through_dict_and_json(name):
    cfg = RECIPES[name]()
    assert cfg.objective_name in OBJECTIVES and cfg.size in ENCODER_SIZES
    for k, v in ENCODER_SIZES[cfg.size].items():
        assert getattr(cfg.model, k) == v                          # the model matches its named size
    d = cfg.to_dict()
    back = from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert back.to_dict() == d
    assert type(back.objective) is type(cfg.objective)


def test_from_dict_rejects_unknown_keys_and_bad_values():
    d = demo().to_dict()
    for part, key in (("model", "hiden_size"), ("train", "stepz"), ("objective", "mask_probability"),
                      ("data", "seqlen")):
        bad = json.loads(json.dumps(d))
        bad[part][key] = 1
        with pytest.raises(UserError, match=f"unknown config key {part}.{key}"):
            from_dict(bad)
    with pytest.raises(UserError, match="run.extra"):
        from_dict({**d, "extra": 1})
    with pytest.raises(UserError, match="unknown objective"):
        from_dict({**d, "objective_name": "nope"})
    bad = json.loads(json.dumps(d))
    bad["model"]["norm"] = "middle"
    with pytest.raises(UserError, match="invalid model config"):
        from_dict(bad)
    assert from_dict({}) == RunConfig()                              # every part has a default
