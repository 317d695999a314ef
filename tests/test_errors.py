"""Bad input gets a clear error naming the bad value."""

from __future__ import annotations

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import get_peft_model
from test_model import make_adapted

from maple_peft import MaPLeConfig, PromptClassifier, format_prompts, tokenize_prompts
from maple_peft.layer import MaPLeLayer


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
        ({"prompt_init_std": float("nan")}, "prompt_init_std=nan must be a finite number > 0"),
        ({"prompt_init_std": float("inf")}, "prompt_init_std=inf must be a finite number > 0"),
        ({"prompt_init_std": -0.1}, r"prompt_init_std=-0\.1 must be a finite number > 0"),
        ({"prompt_init_token_ids": [320, -5]}, r"prompt_init_token_ids=\[320, -5\] holds negative token ids"),
        ({"variant": "language", "n_ctx_vision": 3}, "n_ctx_vision=3 was given, but variant='language' has no vision"),
        ({"prompt_init": None, "n_ctx": 74}, "n_ctx=74 does not fit in a 77-token text context.*n_ctx <= 73"),
        ({"n_ctx": 80, "variant": "ivlp"}, "n_ctx=80 does not fit"),
    ],
)
def test_invalid_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaPLeConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prompt_init_std": "0.02"}, "prompt_init_std='0.02' must be a number"),
        ({"prompt_init_std": True}, "prompt_init_std=True must be a number"),
        ({"prompt_init": 3}, r"prompt_init=3 must be a string \(got int\)"),
        ({"prompt_init": ["a", "photo"]}, r"prompt_init=\['a', 'photo'\] must be a string \(got list\)"),
        ({"prompt_init_token_ids": ["a", "b"]}, "prompt_init_token_ids=.* must be a list of integer token ids"),
        ({"n_ctx": "2"}, "n_ctx='2' must be an integer >= 1"),
        ({"depth": 2.0}, "depth=2.0 must be an integer >= 1"),
        ({"n_ctx_vision": True, "variant": "ivlp"}, "n_ctx_vision=True must be an integer >= 1"),
    ],
)
def test_config_values_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        MaPLeConfig(**kwargs)


def test_the_longest_n_ctx_fills_clip_context_exactly(tokenizer):
    config = MaPLeConfig(prompt_init=None, n_ctx=73)
    assert len(tokenizer(format_prompts(config, ["cat"]))["input_ids"][0]) == 77
    assert MaPLeConfig(n_ctx=200, variant="vision").num_vision_tokens == 200  # vision prompts are not text tokens


def test_prompt_init_token_ids_outside_the_vocabulary_are_refused_at_creation():
    clip = tiny_clip()
    vocab = clip.config.text_config.vocab_size
    with pytest.raises(ValueError, match=rf"prompt_init_token_ids=\[320, {vocab}\] .* vocabulary of {vocab} tokens"):
        get_peft_model(clip, MaPLeConfig(depth=2, prompt_init_token_ids=[320, vocab]))
    assert not any(isinstance(m, MaPLeLayer) for m in clip.modules())


def test_prompt_init_longer_than_clip_context_is_refused_at_creation():
    prompt_init = " ".join(["photo"] * 74)
    with pytest.raises(ValueError, match=r"has 74 tokens, too many for the text encoder's 77-token context.* 73 "):
        get_peft_model(
            tiny_clip(), MaPLeConfig(depth=2, prompt_init=prompt_init, tokenizer_name_or_path=TOKENIZER_DIR)
        )


def test_model_of_an_unsupported_family_is_refused_before_anything_is_injected():
    from transformers import ChineseCLIPConfig, ChineseCLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=dict(vision, patch_size=8)))
    with pytest.raises(
        ValueError,
        match=r"ChineseCLIPModel \(model_type='chinese_clip'\) is not a supported backbone.*"
        r"CLIP \(CLIPModel.*MetaCLIP 2 \(MetaClip2Model.*SigLIP \(SiglipModel.*SigLIP 2 \(Siglip2Model",
    ):
        get_peft_model(model, MaPLeConfig(depth=2, prompt_init=None))
    assert not any(isinstance(m, MaPLeLayer) for m in model.modules())


def test_clip_model_subclass_with_clip_towers_is_accepted_and_one_with_other_towers_refused(tokenizer, pixel_values):
    from transformers import CLIPModel

    class MyCLIP(CLIPModel):
        pass

    clip = tiny_clip()
    custom = MyCLIP(clip.config)
    custom.load_state_dict(clip.state_dict())
    model = get_peft_model(custom.eval(), MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR))
    with torch.no_grad():
        assert PromptClassifier(model, tokenizer, ["cat", "dog"])(pixel_values).shape == (3, 2)

    odd = MyCLIP(clip.config)
    odd.text_model.encoder = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"The CLIPText\w+ of this MyCLIP is not built like CLIP's"):
        get_peft_model(odd, MaPLeConfig(depth=2, prompt_init=None))


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
    with pytest.raises(ValueError, match=r"class 'supercal.*' .* has \d+ tokens, more than the text encoder's 77"):
        tokenize_prompts(tokenizer, [f"a photo of a {long_name}."], [long_name])
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match="has 1[0-9]{2} tokens"):
        PromptClassifier(model, tokenizer, ["cat", long_name])


def test_not_a_clip_model():
    with pytest.raises(ValueError, match="Sequential is not a supported backbone"):
        get_peft_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), MaPLeConfig(prompt_init=None))


def test_empty_class_names(tokenizer):
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match="non-empty"):
        PromptClassifier(model, tokenizer, [])
