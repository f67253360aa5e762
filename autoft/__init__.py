"""autoft: find the best way to fine-tune a pretrained model on your data.

An Optuna study searches learning rate, batch size and freeze depth, prunes hopeless trials,
and reports the best configuration that still keeps the model's base-task skill.
"""

__version__ = "0.1.0"
