"""CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022,
https://huggingface.co/papers/2203.05557): a depth-1 text context shifted per image by a meta-net of the image
features, `Linear(embed_dim, embed_dim // 16) -> ReLU -> Linear(embed_dim // 16, d_text)`; `prompt_init` sets
`n_ctx` to its word count, as the original code does."""

from __future__ import annotations

from typing import Any

from . import Method, register


class CoCoOp(Method):
    name = "cocoop"
    title = "CoCoOp"
    paper = "[CoCoOp](https://arxiv.org/abs/2203.05557) (Conditional Prompt Learning, Zhou et al., CVPR 2022)"
    citation = """@inproceedings{zhou2022cocoop,
  title={Conditional Prompt Learning for Vision-Language Models},
  author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}"""
    description = (
        "learns {prompts} of the text encoder and a small meta-network that shifts them for each image, so that the "
        "class prompts depend on the image (CoCoOp)."
    )
    recipes = ("cocoop_base2novel", "cocoop_cross_dataset")
    text_prompts = True
    conditional = True
    default_depth = 1

    def resolve(self, config: Any) -> None:
        if config.depth not in (None, 1):
            raise ValueError(
                f"depth={config.depth} was given, but CoCoOp (variant='cocoop') learns its context at the input "
                "only; leave depth unset (1)."
            )
        config.depth = 1
        if isinstance(config.prompt_init, str) and config.prompt_init.strip():
            words = len(config.prompt_init.replace("_", " ").split())
            if config.n_ctx not in (2, words):  # 2: the field's default, overridden by the word count
                raise ValueError(
                    f"n_ctx={config.n_ctx} was given with prompt_init={config.prompt_init!r}, but CoCoOp takes n_ctx "
                    f"from prompt_init's word count ({words}); leave n_ctx unset, or pass prompt_init=None for a "
                    f"random context of n_ctx tokens."
                )
            config.n_ctx = words


register(CoCoOp())
