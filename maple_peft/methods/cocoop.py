"""CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022,
https://huggingface.co/papers/2203.05557): a depth-1 text context shifted per image by a meta-net of the image
features, `Linear(embed_dim, embed_dim // 16) -> ReLU -> Linear(embed_dim // 16, d_text)`; `prompt_init` sets
`n_ctx` to its word count, as the original code does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from . import Method, register

#: CoCoOp's meta-net in its files: `Linear(embed_dim, embed_dim // 16) -> ReLU -> Linear(embed_dim // 16, d_text)`
META_NET = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


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
    checkpoint_priority = 50
    checkpoint_files = ("CoCoOp", "a prompt learner alone, 'ctx' with 'meta_net.*', 'token_prefix', 'token_suffix'")
    learner_keys = frozenset({"ctx", *META_NET})

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """CoCoOp's `prompt_learner/model.pth.tar-N`: `ctx` and its meta-net `meta_net.linear{1,2}.{weight,bias}`."""
        from ..convert import OfficialCheckpoint, prompt_learner_alone

        learner = prompt_learner_alone(state)
        if learner is None or not any(key.startswith("meta_net.") for key in learner):
            return None
        n_ctx, converted = convert_cocoop_state_dict(learner)
        return OfficialCheckpoint("CoCoOp", "cocoop", n_ctx, None, 1, converted)

    def checkpoint_dims(self, converted: Any) -> dict[str, int]:
        from ..convert import text_width

        linear1 = converted.state_dict[f"base_model.model.{meta_net_key('linear1.weight')}"]
        return {"d_text": text_width(converted), "embed_dim": linear1.shape[1]}

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


def meta_net_key(name: str) -> str:
    """The saved key of a tensor of CoCoOp's meta-net (`linear1.weight` -> `...maple_meta_linear1.weight`)."""
    from ..backbones import TEXT_EMBEDDING

    layer, _, param = name.partition(".")
    return f"{TEXT_EMBEDDING}.maple_meta_{layer}.{param}"


def convert_cocoop_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """Map CoCoOp's prompt learner (`ctx`, `meta_net.linear{1,2}.{weight,bias}`) to this library's `cocoop` adapter
    keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors, without a `prompt_learner.` prefix.

    Returns:
        `(n_ctx, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    from ..backbones import TEXT_EMBEDDING
    from ..convert import adapter_tensors, checkpoint_tensor

    if "bias_vectors" in learner:
        raise ValueError(
            "The checkpoint is malformed: it holds KgCoOp's 'bias_vectors' beside CoCoOp's 'meta_net.linear2'; it "
            "is a file of neither."
        )
    ctx = checkpoint_tensor(learner, "ctx", 2, "ctx")
    tensors = {key: checkpoint_tensor(learner, key, 2 if key.endswith("weight") else 1, key) for key in META_NET}
    weight1, bias1, weight2, bias2 = (tensors[key] for key in META_NET)
    d_text, hidden = ctx.shape[1], weight1.shape[0]
    if (
        bias1.shape[0] != hidden
        or weight2.shape[1] != hidden
        or weight2.shape[0] != d_text
        or bias2.shape[0] != d_text
    ):
        shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in tensors.items())
        raise ValueError(
            f"The checkpoint is malformed: its meta-net ({shapes}) does not map image features to the {d_text}-wide "
            f"context; expected meta_net.linear1 (h, embed_dim) + (h,), meta_net.linear2 ({d_text}, h) + ({d_text},)."
        )
    state = {f"{TEXT_EMBEDDING}.maple_ctx": ctx}
    state.update({meta_net_key(key.removeprefix("meta_net.")): value for key, value in tensors.items()})
    return ctx.shape[0], adapter_tensors(state)
