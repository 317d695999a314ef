"""Pushing a finished run (adapter, model card, metrics, plots, logs) to the Hugging Face Hub."""

from __future__ import annotations

import warnings
from pathlib import Path

from huggingface_hub import HfApi

__all__ = ["PUSH_ALLOW_PATTERNS", "PUSH_IGNORE_PATTERNS", "push_run_to_hub"]

PUSH_ALLOW_PATTERNS: tuple[str, ...] = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "metrics.json",
    "*.png",
    "*.txt",
    "*.log",
)
"""The files of a run directory that are uploaded: the adapter, its card, the metrics, plots and logs."""

PUSH_IGNORE_PATTERNS: tuple[str, ...] = ("checkpoints/**", "**/checkpoints/**")
"""Never uploaded: the resumable training checkpoints (optimizer and RNG states)."""


def push_run_to_hub(
    output_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Uploads a run directory's adapter, model card, metrics, plots and logs to a Hub model repository.

    The repository is created if needed. Only the files matching `PUSH_ALLOW_PATTERNS` are uploaded; the
    `checkpoints/` folder (optimizer state for resuming) never is.

    Args:
        output_dir: The run directory written by the training script; must contain `adapter_model.safetensors`.
        repo_id: The model repository, `"user/name"` or `"org/name"`.
        token: A Hub token with write access; `None` uses the logged-in token (`hf auth login`) or `HF_TOKEN`.
        private: Create the repository as private (ignored when it already exists).
        commit_message: The commit message; defaults to one naming the run directory.

    Returns:
        The URL of the created commit.

    Example:
        ```python
        >>> push_run_to_hub("outputs/eurosat_b2n_seed1", "me/maple-clip-b16-eurosat")
        'https://huggingface.co/me/maple-clip-b16-eurosat/commit/...'
        ```
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir={str(output_dir)!r} is not a directory; pass the training run's folder.")
    if not (output_dir / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{str(output_dir)!r} has no adapter_model.safetensors; save the adapter first "
            "(model.save_pretrained(output_dir)) or pass the folder that holds it."
        )
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id={repo_id!r} is not a Hub repository id; use 'user/name' (or just 'name').")
    if not (output_dir / "README.md").is_file():
        warnings.warn(
            f"{str(output_dir)!r} has no README.md model card; write one with maple_peft.training.card.write_model_card "
            "before pushing so the Hub knows how to load the adapter.",
            stacklevel=2,
        )

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id=repo_id, exist_ok=True, private=private, repo_type="model")
    # `create_repo` resolves a bare "name" to "user/name".
    resolved_id = repo_url.repo_id if isinstance(getattr(repo_url, "repo_id", None), str) else repo_id
    commit = api.upload_folder(
        folder_path=output_dir,
        repo_id=resolved_id,
        repo_type="model",
        allow_patterns=list(PUSH_ALLOW_PATTERNS),
        ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        commit_message=commit_message or f"Upload MaPLe adapter from {output_dir.name}",
    )
    commit_url = getattr(commit, "commit_url", None)
    return commit_url if isinstance(commit_url, str) else str(repo_url)
