"""Plain-words descriptions of configs and durations, for people who do not tune models daily."""

from __future__ import annotations


def describe_layers(trainable_layers: int, depth: int) -> str:
    if trainable_layers == 0:
        return f"train only the new head (all {depth} layers frozen)"
    if trainable_layers >= depth:
        return f"train all {depth} layers and the embeddings"
    return f"train the top {trainable_layers} of {depth} layers"


def describe_params(params: dict, depth: int) -> str:
    """'train the top 4 of 6 layers at learning rate 3e-05 (head 10×), batches of 32, 3 epochs'."""
    if not params:
        return "unknown config"
    words = [describe_layers(int(params["trainable_layers"]), depth)]
    words[0] += f" at learning rate {params['learning_rate']:.1e}"
    if "head_lr_multiplier" in params:
        words[0] += f" (the head {params['head_lr_multiplier']:.0f}× that)"
    if "batch_size" in params:
        words.append(f"batches of {params['batch_size']}")
    if "epochs" in params:
        epochs = int(params["epochs"])
        words.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    return ", ".join(words)


def describe_seconds(seconds: float) -> str:
    """'2h05m', '4m12s', '38s'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
