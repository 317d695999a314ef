"""The baseline: MaPLe logits computed the way the original MaPLe code computes them.

Written from a description of the original code (Khattak et al., CVPR 2023), not copied from it:

* the class prompts `"{prompt_init} {class name}."` are tokenized once, padded to CLIP's full context of 77 tokens;
* every call (every training step and every evaluation batch) encodes all class prompts, `C x 77` tokens, with the
  prompted text tower, then the batch of images with the prompted vision tower;
* logits are `logit_scale.exp() * cos(image, text)`, in float32, nothing cached.

It runs the SAME model as the library (the same PeftModel, hence the same adapter parameters, MaPLe depth and
attention implementation), so any difference in the logits comes from how the computation is organized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

CONTEXT_LENGTH = 77


def _pooled(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class OriginalMaPLeBaseline(nn.Module):
    """Logits of `model` (a MaPLe PeftModel) for `class_names`, recomputing the text features of all classes per call.

    Args:
        model: the MaPLe-adapted CLIP (a `PeftModel`).
        tokenizer: the CLIP tokenizer.
        class_names: the class names (`_` becomes a space, as in the original code).
        prompt_init: the adapter's initialization text, which forms the prompts.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, class_names: Sequence[str], prompt_init: str) -> None:
        super().__init__()
        self.model = model
        self.prompts = [f"{prompt_init} {name.replace('_', ' ')}." for name in class_names]
        encoded = tokenizer(
            self.prompts, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
        )
        device = next(model.parameters()).device
        self.input_ids = encoded["input_ids"].to(device)  # (C, 77)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        text = _pooled(self.model.get_text_features(input_ids=self.input_ids))
        image = _pooled(self.model.get_image_features(pixel_values=pixel_values))
        text = text / text.norm(dim=-1, keepdim=True)
        image = image / image.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp() * image @ text.t()
