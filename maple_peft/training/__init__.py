"""The training toolkit of the example scripts: data, checkpoints, schedule, metrics, model card and plots.

The core package (`maple_peft`) never imports this subpackage; `examples/train.py` and `examples/evaluate.py` do.
It needs the `train` extra (`pip install "maple-peft[train]"`), and `plots` needs the `plots` extra.
"""
