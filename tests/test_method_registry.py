"""The methods are modules that register themselves; the engine, the adapter files and the training script read their
declarations."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import PeftModel, get_peft_model
from transformers import CLIPTokenizer

from maple_peft import MaPLeConfig, PromptClassifier, methods
from maple_peft.adapter_card import method_name
from maple_peft.cli import main, recipe_summary

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import options  # noqa: E402

SAVED = Path(__file__).parent / "fixtures" / "adapters_v0_1"


def test_every_recipe_belongs_to_exactly_one_method():
    named = [recipe for method in methods.registry().values() for recipe in method.recipes]
    on_disk = {path.stem for path in (REPO / "examples" / "configs").glob("*.yaml")} - {"smoke"}
    assert sorted(named) == sorted(set(named))
    assert set(named) == on_disk


def test_maple_peft_methods_lists_every_method_and_every_recipe_with_the_original_it_reproduces(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    blocks: dict[str, list[str]] = {}  # method title -> its lines (the first at the margin, the others indented)
    for line in out.splitlines():
        if not line.startswith(" "):
            blocks[line.split(" (--")[0]] = []
        list(blocks.values())[-1].append(line.strip())
    assert list(blocks) == [method.title for method in methods.registry().values()]
    for method in methods.registry().values():
        text = " ".join(blocks[method.title])
        assert (f"--variant {method.name}" in blocks[method.title][0]) == method.is_variant
        assert all(link in text for link in re.findall(r"\]\(([^)]*)\)", method.paper))  # the paper's link
        for recipe in method.recipes:
            summary = recipe_summary(REPO / "examples" / "configs" / f"{recipe}.yaml")
            assert summary and f"examples/configs/{recipe}.yaml: {summary}" in text
    listed = set(re.findall(r"examples/configs/(\w+)\.yaml", out))
    assert listed == {path.stem for path in (REPO / "examples" / "configs").glob("*.yaml")} - {"smoke"}


def test_a_recipe_summary_is_the_headers_first_sentence_which_names_the_original():
    summary = recipe_summary(REPO / "examples" / "configs" / "maple_base2novel.yaml")
    assert summary == (
        "MaPLe, base-to-novel generalization (the paper's Table 1 recipe; the MaPLe repository's "
        "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml)"
    )


def test_maple_peft_methods_says_where_the_recipes_are_when_it_cannot_find_them(tmp_path, capsys):
    assert main(["methods", "--configs", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert f"mmrl_base2novel.yaml (not in {tmp_path})" in out
    assert "examples/configs/ of the source repository" in err and "--configs DIR" in err
    assert main(["methods", "--configs", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == (
        f"maple-peft: error: --configs {tmp_path / 'missing'} is not a folder; name the folder of the recipes "
        "(examples/configs).\n"
    )


def test_a_maple_adapter_saves_no_option_of_another_method(tmp_path):
    model = get_peft_model(tiny_clip(), MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["variant"] == "maple"
    assert not set(saved) & set(methods.option_fields())


def test_an_mmrl_adapter_saves_its_own_options(tmp_path):
    config = MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8, template="a photo of a {}.")
    get_peft_model(tiny_clip(), config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {name: saved[name] for name in ("n_rep", "rep_dim", "rep_layers", "alpha")} == {
        "n_rep": 2,
        "rep_dim": 8,
        "rep_layers": [1, 2, 3],
        "alpha": 0.7,
    }


def test_an_adapter_of_the_0_1_format_is_saved_again_without_the_other_methods_options(tmp_path):
    with open(SAVED / "maple" / "adapter_config.json") as handle:
        assert "n_rep" in json.load(handle)  # written when every adapter held every option
    PeftModel.from_pretrained(tiny_clip(), str(SAVED / "maple")).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "n_rep" not in saved and saved["n_ctx"] == 2


def test_an_option_of_another_method_is_refused_naming_its_method():
    with pytest.raises(ValueError, match=r"n_rep=3 given, but these are options of variant='mmrl'"):
        MaPLeConfig(variant="ivlp", n_rep=3)


def test_every_declared_option_is_a_flag_of_the_training_script_with_its_help_and_no_default():
    parser = options.build_parser()
    actions = {action.dest: action for action in parser._actions}
    for kind in ("options", "objective_options"):
        for name, (field, _) in methods.option_fields(kind).items():
            assert actions[name].default is None
            assert actions[name].help.startswith(field.metadata["help"])
    args = options.parse_args(["--dataset", "eurosat", "--data_root", "x", "--variant", "mmrl", "--rep_layers", "2"])
    assert (args.rep_layers, args.objective) == ([2], "mmrl")


class _ShallowText(methods.Method):
    """A method added in a test: text prompts in the first 2 layers unless told otherwise."""

    name = "shallow_text"
    title = "Shallow text prompts"
    text_prompts = True
    default_depth = 2


def test_a_method_registered_by_a_module_is_built_trained_named_and_saved(monkeypatch, tmp_path, pixel_values):
    monkeypatch.setitem(methods.registry(), _ShallowText.name, _ShallowText())
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), MaPLeConfig(variant="shallow_text", n_ctx=2, prompt_init=None))
    torch.manual_seed(0)
    same = get_peft_model(tiny_clip(), MaPLeConfig(variant="language", n_ctx=2, depth=2, prompt_init=None))
    assert model.peft_config["default"].depth == 2
    logits = PromptClassifier(model, tokenizer, ["cat", "dog"])(pixel_values)
    torch.testing.assert_close(logits, PromptClassifier(same, tokenizer, ["cat", "dog"])(pixel_values))
    assert method_name(model.peft_config["default"].to_dict()) == "Shallow text prompts"
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_clip(), str(tmp_path))
    torch.testing.assert_close(PromptClassifier(loaded, tokenizer, ["cat", "dog"])(pixel_values), logits)


def test_an_objective_built_from_the_scripts_options_takes_its_declared_defaults_for_unset_ones():
    import maple_peft

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    coop = get_peft_model(tiny_clip(), MaPLeConfig(variant="language", n_ctx=2, depth=1, prompt_init=None))
    clf = PromptClassifier(coop, tokenizer, ["cat", "dog"])
    src = maple_peft.OBJECTIVES["src"].from_options(clf, text_weight=None, image_weight=3.0)
    declared = {f.name: f.default for f in methods.fields_of(methods.objectives()["src"].objective_options)}
    assert (src.text_weight, src.image_weight, src.logits_weight) == (
        declared["text_weight"],
        3.0,
        declared["logits_weight"],
    )
    kg = maple_peft.OBJECTIVES["kgcoop"].from_options(clf)  # mapped onto the constructor's own names
    assert (kg.weight, kg.template) == (8.0, "a photo of a {}.")
    kg = maple_peft.OBJECTIVES["kgcoop"].from_options(clf, kg_weight=2.0, kg_template="a {} texture.")
    assert (kg.weight, kg.template) == (2.0, "a {} texture.")
    mmrl = get_peft_model(tiny_clip(), MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8))
    rep = maple_peft.OBJECTIVES["mmrl"].from_options(PromptClassifier(mmrl, tokenizer, ["cat", "dog"]))
    assert (rep.reg_weight, rep.alpha) == (1.0, 0.7)
