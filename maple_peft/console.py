"""What the commands print: our lines and real problems, not third-party messages known to be harmless.

`quiet_known_messages()` filters each known message at its source, by its logger or its warning category and text, so
that every other message of the same library still shows:

- transformers' "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
  (the PIL processor gives CLIP's preprocessing; torchvision is optional);
- transformers' "`is_gradient_checkpointing` is deprecated" FutureWarning, raised by PEFT's own calls into
  transformers 5 (nothing a user can change);
- accelerate's "Deleting N checkpoints to make room for new checkpoint" (`--checkpoints_total_limit` at work).

Progress bars are drawn on a terminal only (`progress_bars_wanted`): in a file or a pipe each update is one more
carriage-return line between the log lines. `disable_library_progress_bars` turns off those of transformers,
huggingface_hub and datasets.
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["KNOWN_HARMLESS", "disable_library_progress_bars", "progress_bars_wanted", "quiet_known_messages"]

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
    """Filters the third-party messages of `KNOWN_HARMLESS` (and one FutureWarning) at their source; idempotent.

    Only these messages are dropped: other warnings of the same loggers and libraries still show. Nothing is imported.
    """
    for name, fragments in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(fragments))
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


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
