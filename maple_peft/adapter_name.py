"""Which adapter names MaPLe's layers can hold.

Each MaPLe layer keeps its adapters' tensors in `nn.ParameterDict` / `nn.ModuleDict` containers keyed by the adapter
name, and torch stores each key as an attribute of its container: a name that is already an attribute there (`copy`,
`keys`, `update`, `training`, ...), or that holds a `.`, cannot be stored (torch raises `KeyError: "attribute 'copy'
already exists"` half-way through the injection). `check_adapter_name` refuses such a name before anything is changed.
"""

from __future__ import annotations

from torch import nn

__all__ = ["check_adapter_name"]


def check_adapter_name(adapter_name: str) -> None:
    """Refuses an adapter name that MaPLe's layers cannot store, before any layer is changed.

    Args:
        adapter_name (`str`): the name given to `get_peft_model`, `PeftModel.from_pretrained`, `add_adapter`, ...

    Raises:
        `ValueError`: the name is empty, holds a `.`, or is an attribute of torch's parameter/module containers.
    """
    if not isinstance(adapter_name, str) or not adapter_name:
        raise ValueError(f"adapter_name={adapter_name!r} must be a non-empty string, e.g. 'default' or 'eurosat'.")
    if "." in adapter_name:
        raise ValueError(
            f"adapter_name={adapter_name!r} holds a '.', which torch does not allow in parameter names; use e.g. "
            f"{adapter_name.replace('.', '_')!r}."
        )
    for container in (nn.ParameterDict(), nn.ModuleDict()):
        if hasattr(container, adapter_name) or adapter_name.startswith("__"):
            raise ValueError(
                f"adapter_name={adapter_name!r} is the name of an attribute of torch's {type(container).__name__}, where "
                f"MaPLe keeps each adapter's tensors under its name; use another name, e.g. '{adapter_name}_adapter'."
            )
