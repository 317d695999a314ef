"""What the commands print: our lines and real problems, not third-party messages known to be harmless.

`quiet_known_messages()` filters each known message at its source, by its logger or its warning category and text, so
that every other message of the same library still shows:

- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
  (the PIL processor gives CLIP's preprocessing; torchvision is optional);
- accelerate's "Deleting N checkpoints to make room for new checkpoint" (`--checkpoints_total_limit` at work).

`peft_deprecation_quieted()` surrounds our own calls that build a `PeftModel` (`get_peft_model`,
`PeftModel.from_pretrained`): PEFT's `PeftModel.__init__` reads `model.is_gradient_checkpointing`, which transformers 5
deprecated, so each of them raises transformers' "`is_gradient_checkpointing` is deprecated" FutureWarning from PEFT's
code (nothing in this project or a user's code calls it). Only that warning, and only during those calls, is dropped.

Progress bars are drawn on a terminal only (`progress_bars_wanted`): in a file or a pipe each update is one more
carriage-return line between the log lines. `disable_library_progress_bars` turns off those of transformers,
huggingface_hub and datasets.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "KNOWN_HARMLESS",
    "disable_library_progress_bars",
    "peft_deprecation_quieted",
    "progress_bars_wanted",
    "quiet_known_messages",
]

KNOWN_HARMLESS: dict[str, tuple[str, ...]] = {
    "transformers.utils.import_utils": ("requires torchvision (not installed); falling back to",),
    "accelerate.accelerator": ("checkpoints to make room for new checkpoint",),
}
"""Logger name -> message fragments of the records `quiet_known_messages` drops from that logger."""


class _DropKnown(logging.Filter):
    """Drops the records of one logger whose message contains one of `fragments`."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_known_messages() -> None:
    """Filters the third-party messages of `KNOWN_HARMLESS` at their source; idempotent.

    Only these messages are dropped: other warnings of the same loggers and libraries still show. Nothing is imported.
    """
    for name, fragments in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))


@contextmanager
def peft_deprecation_quieted() -> Iterator[None]:
    """Drops transformers' "`is_gradient_checkpointing` is deprecated" FutureWarning during the `with` block, and
    nothing else: PEFT's `PeftModel.__init__` reads that deprecated property (peft 0.21 on transformers 5), so every
    `get_peft_model` / `PeftModel.from_pretrained` raises it from PEFT's code. Our calls into PEFT are wrapped in it.

    Example:
        >>> with peft_deprecation_quieted():
        ...     model = get_peft_model(clip, MaPLeConfig())
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def progress_bars_wanted() -> bool:
    """Whether to draw progress bars: only when stderr, where they go, is a terminal."""
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def disable_library_progress_bars() -> None:
    """Turns off the progress bars of transformers and huggingface_hub, and of datasets when it is imported."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # huggingface_hub's too
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
