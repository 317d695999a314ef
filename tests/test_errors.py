"""Bad input gets a clear error naming the bad value."""

from __future__ import annotations

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import get_peft_model
from test_model import make_adapted

from maple_peft import MaPLeConfig, PromptClassifier, tokenize_prompts


def test_depth_larger_than_the_text_tower():
    with pytest.raises(ValueError, match=r"depth=4 but the text encoder has 3 layers; use depth <= 3"):
        get_peft_model(tiny_clip(), MaPLeConfig(depth=4, tokenizer_name_or_path=TOKENIZER_DIR))


def test_depth_larger_than_the_vision_tower():
    with pytest.raises(ValueError, match=r"depth=5 but the vision encoder has 4 layers"):
        get_peft_model(tiny_clip(), MaPLeConfig(depth=5, variant="vision"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_ctx": 0}, "n_ctx=0"),
        ({"depth": 0}, "depth=0"),
        ({"variant": "deep"}, "variant='deep'"),
        ({"n_ctx_vision": 3}, "n_ctx_vision=3 differs from n_ctx=2"),
        ({"task_type": "CAUSAL_LM"}, "task_type='CAUSAL_LM'"),
        ({"prompt_init": "  "}, "prompt_init='  '"),
    ],
)
def test_invalid_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaPLeConfig(**kwargs)


def test_prompt_init_shorter_than_n_ctx():
    with pytest.raises(ValueError, match=r"prompt_init='photo' has 1 tokens but n_ctx=2"):
        get_peft_model(tiny_clip(), MaPLeConfig(prompt_init="photo", depth=2, tokenizer_name_or_path=TOKENIZER_DIR))


def test_prompt_init_without_a_tokenizer_source():
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        get_peft_model(tiny_clip(), MaPLeConfig(depth=2))


def test_user_set_target_modules_are_refused():
    with pytest.raises(ValueError, match="leave target_modules unset"):
        get_peft_model(tiny_clip(), MaPLeConfig(depth=2, prompt_init=None, target_modules=["q_proj"]))


def test_class_prompt_longer_than_77_tokens(tokenizer):
    long_name = " ".join(["supercalifragilistic"] * 30)
    with pytest.raises(ValueError, match=r"class 'supercal.*' .* has \d+ tokens, more than CLIP's 77"):
        tokenize_prompts(tokenizer, [f"a photo of a {long_name}."], [long_name])
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, ["cat", long_name])
    with pytest.raises(ValueError, match="has 1[0-9]{2} tokens"):
        clf(torch.randn(1, 3, 32, 32))


def test_not_a_clip_model():
    with pytest.raises(ValueError, match="adapts a transformers CLIPModel"):
        get_peft_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), MaPLeConfig(prompt_init=None))


def test_empty_class_names(tokenizer):
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match="non-empty"):
        PromptClassifier(model, tokenizer, [])
