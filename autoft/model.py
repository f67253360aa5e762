"""Loading a model and its tokenizer, and freezing all but its head and top blocks.

Finds any architecture's stack of blocks by structure and splits its parameters by run order.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from autoft.errors import UsageError

__all__ = [
    "Blocks",
    "ParameterGroups",
    "count_parameters",
    "find_blocks",
    "freeze",
    "load_model",
    "load_tokenizer",
    "loading",
    "model_depth",
    "quiet_transformers",
    "split_parameters",
    "with_new_head",
]

_DUMMY_LENGTH = 4
_DUMMY_IMAGE_SIZE = 64


def load_model(
    source: str,
    label_names: list[str],
    trust_remote_code: bool = False,
    problem_type: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `source` (a hub name or a saved folder) with a fresh head for `label_names` (one
    output per name; a regression head has one name and `problem_type` 'regression').

    A head of another size in the checkpoint is replaced (`ignore_mismatched_sizes`), weights come
    from safetensors where the checkpoint has them, and a tokenizer without a pad token (GPT-2)
    pads with its end-of-sequence token so that batches of several texts work.
    """
    if problem_type != "regression":
        _check_labels(label_names)
    with loading(source):
        tokenizer = load_tokenizer(source, trust_remote_code)
        model = with_new_head(AutoModelForSequenceClassification, source, label_names,
                              trust_remote_code, problem_type=problem_type)
    _ensure_pad_token(model, tokenizer)
    return model, tokenizer


@contextlib.contextmanager
def loading(source: str) -> Iterator[None]:
    """Around every load of a model or its processor for the user: a missing folder is named,
    transformers' expected reports are hidden, and a load that fails is one sentence (a pickle
    that would run code is refused as such)."""
    _check_model_folder(source)
    try:
        with quiet_transformers(), warnings.catch_warnings():
            # torch's note on an unusual pickle protocol, before the refusal below says it all
            warnings.filterwarnings("ignore", module="torch._weights_only_unpickler")
            yield
    except pickle.UnpicklingError as error:
        raise UsageError(
            f"{_pickle_file(error, source)} is a pickle that runs code when loaded, and autoft "
            "refuses pickles that run code: save the model with safetensors "
            "(save_pretrained(safe_serialization=True)) and point --model at that folder."
        ) from None
    except (OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        raise UsageError(
            f"Could not load model {source!r} ({reason}): check the --model name, the network, "
            "or trust_remote_code."
        ) from error


def _pickle_file(error: BaseException, source: str) -> str:
    """The file torch.load refused (its argument `f`), else the model's name."""
    trace = error.__traceback__
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_code.co_name == "load" and isinstance(frame.f_locals.get("f"), str | Path):
            return str(frame.f_locals["f"])
        trace = trace.tb_next
    return f"The checkpoint of {source}"


def with_new_head(auto_class, source: str, label_names: list[str], trust_remote_code: bool,
                  **settings) -> PreTrainedModel:
    """`source` loaded as `auto_class` with a fresh head for `label_names`, inside `loading`: a
    head of another size in the checkpoint is replaced, weights come from safetensors where the
    checkpoint has them."""
    return auto_class.from_pretrained(
        source,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,
        trust_remote_code=trust_remote_code,
        use_safetensors=None,  # None: safetensors when present, else torch weights_only
        **settings,
    )


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer alone (workers' base-task checks need it without the model)."""
    _check_tokenizer_files(source, trust_remote_code)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


# How the files of a saved tokenizer begin (tokenizer.json, tokenizer_config.json, vocab.txt,
# vocab.json, merges.txt, spiece.model, sentencepiece.bpe.model, special_tokens_map.json, ...).
_TOKENIZER_FILES = ("tokenizer", "vocab", "merges", "spiece", "sentencepiece", "special_tokens")


def _check_tokenizer_files(source: str, trust_remote_code: bool) -> None:
    """A folder without tokenizer files still loads: transformers builds the config's tokenizer
    class with no vocabulary, which reads every word as [UNK], so every trial scores chance."""
    folder = Path(os.path.expanduser(source))
    if not folder.is_dir() or any(f.name.startswith(_TOKENIZER_FILES) for f in folder.iterdir()):
        return
    # a config transformers cannot read is the first fault, said as such by `loading`
    AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if (folder / "preprocessor_config.json").is_file():
        raise UsageError(
            f"Model folder {source} is an image model with no tokenizer, and the data is text: "
            "use --task image-classification with image data, or a text model."
        )
    raise UsageError(
        f"Model folder {source} holds no tokenizer files (tokenizer.json, vocab.txt, ...), so "
        "every text would read as unknown tokens: save the tokenizer into it "
        "(tokenizer.save_pretrained) or point --model at a hub name."
    )


def _check_labels(label_names: list[str]) -> None:
    """A head needs at least two distinct labels; duplicates would collapse label2id silently."""
    if len(label_names) < 2 or len(set(label_names)) != len(label_names):
        raise UsageError(
            f"Labels {list(label_names)!r} must be at least two distinct names: "
            "check the label column of the data."
        )


def _check_model_folder(source: str) -> None:
    """Catch a wrong folder here: transformers would report it as a bad or unreachable hub name."""
    looks_like_path = os.path.isabs(source) or source.startswith((".", "~"))
    if looks_like_path and not os.path.isdir(os.path.expanduser(source)):
        raise UsageError(
            f"Model folder {source} does not exist: point --model at a folder saved with "
            "save_pretrained or at a hub name."
        )
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise UsageError(
            f"Model folder {source} holds no config.json: point --model at a folder saved with "
            "save_pretrained or at a hub name."
        )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' expected reports (a "newly initialized head", the MISSING keys of a
    load) and its bars (loading weights, writing shards): autoft says itself what matters."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def pad_with_eos(tokenizer: PreTrainedTokenizerBase, source: str) -> PreTrainedTokenizerBase:
    """A tokenizer without a pad token (GPT-2) pads with its end-of-sequence token, so that
    batches of several texts work; the attention mask hides the padding."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(
                f"The tokenizer of {source!r} has neither a pad nor an end-of-sequence "
                "token: choose a model whose tokenizer defines one."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Sequence classifiers find each text's last token through pad_token_id; GPT-2 has none."""
    pad_with_eos(tokenizer, model.name_or_path)
    if model.config.pad_token_id != tokenizer.pad_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id


class Blocks(Sequence[nn.Module]):
    """A model's blocks in run order, bottom first, wherever each one sits.

    Most models keep them in one list; models built in stages (ResNet, ConvNeXt, Swin) keep each
    stage's blocks in a list of that stage. Assigning `blocks[i] = stand_in` puts the stand-in in
    the block's own slot, so the prefix cache can swap blocks in either case. `stages` is the list
    of stages, or None for a single stack.
    """

    def __init__(self, slots: list[tuple[nn.Module, int]], stages: nn.Module | None = None):
        self._slots = slots
        self.stages = stages

    def __len__(self) -> int:
        return len(self._slots)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        container, position = self._slots[index]
        return container[position]

    def __setitem__(self, index: int, module: nn.Module) -> None:
        container, position = self._slots[index]
        container[position] = module


def find_blocks(model: nn.Module) -> Blocks:
    """Return the blocks inside `model.base_model`, in the order they run, bottom block first.

    Found by structure, so new architectures need no table. A stack is a list (ModuleList or
    Sequential) whose children share one class and own parameters; the stack holding the most
    parameters (the outermost on a tie) is taken. Parameters, not child count, decide, so that a
    mixture-of-experts list with more experts than the model has layers is not mistaken for it.
    When its members differ in shape (a CNN's or Swin's stages: widths and depths change between
    them), they are stages, not blocks: the blocks are then the members of each stage's own
    largest stack, stage after stage.

    ALBERT shares one block across all its layers: its stack holds one layer group, so its depth is
    1 and `trainable_layers` is 0 (head only) or 1 (everything).
    """
    base = getattr(model, "base_model", model)
    stack = _largest_stack(base)
    if stack is None:
        raise UsageError(
            f"Found no stack of repeated blocks in {type(model).__name__}: autoft can only "
            "fine-tune models built from repeated layers (BERT-, GPT-, ViT- or ResNet-like)."
        )
    if not _alike(stack):
        inner = [_largest_stack(stage) for stage in stack]
        if all(inner):
            return Blocks([(s, i) for s in inner for i in range(len(s))], stages=stack)
    return Blocks([(stack, i) for i in range(len(stack))])


def _largest_stack(root: nn.Module) -> nn.Module | None:
    """The stack under `root` (itself excluded) with the most parameters, outermost on a tie."""
    best, best_size = None, 0
    for module in root.modules():
        if module is not root and _is_stack(module):
            size = count_parameters(module)
            if size > best_size:
                best, best_size = module, size
    return best


def _is_stack(modules: nn.Module) -> bool:
    """A stack of blocks: a non-empty list, one class throughout, and every block has weights."""
    if not isinstance(modules, nn.ModuleList | nn.Sequential) or len(modules) == 0:
        return False
    kinds = {type(child) for child in modules}
    return len(kinds) == 1 and all(count_parameters(child) > 0 for child in modules)


def _alike(stack: nn.Module) -> bool:
    """Whether every member of `stack` has the same parameters (names and shapes)."""
    shapes = [[(n, p.shape) for n, p in child.named_parameters()] for child in stack]
    return all(shape == shapes[0] for shape in shapes)


def model_depth(model: nn.Module) -> int:
    """How many blocks `freeze` can unfreeze: the largest valid `trainable_layers`."""
    return len(find_blocks(model))


@dataclass(frozen=True)
class ParameterGroups:
    """A model's parameter names by where they run, each name in exactly one group.

    prefix: embeddings and anything else that runs before the top of the stack (or never runs).
    blocks: one tuple per block, bottom block first.
    head: everything that runs after the last block, such as a pooler, final norm, classifier.
    """

    prefix: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]

    def trainable(self, trainable_layers: int) -> frozenset[str]:
        """Names that train with the top `trainable_layers` blocks unfrozen (all: everything)."""
        depth = len(self.blocks)
        if not 0 <= trainable_layers <= depth:
            raise ValueError(f"trainable_layers must be in 0..{depth}, got {trainable_layers}")
        if trainable_layers == depth:
            return frozenset(self.prefix).union(self.head, *self.blocks)
        return frozenset(self.head).union(*self.blocks[depth - trainable_layers :])


_GROUPS_CACHE: weakref.WeakKeyDictionary[nn.Module, ParameterGroups] = weakref.WeakKeyDictionary()


def split_parameters(model: PreTrainedModel) -> ParameterGroups:
    """Split the model's parameters into prefix, blocks and head; cached per model instance.

    Prefix and head are told apart by one forward pass on a dummy input rather than by names: a
    parameter whose module first starts after the last block has finished is head, anything else
    outside the blocks (it ran before or between blocks, or never ran) is prefix, so it stays frozen
    until everything trains. Parameters outside `model.base_model` are always head. In a model
    built in stages, a stage's own parts between blocks (ConvNeXt's and Swin's downsampling) go
    with the block they feed: they train when it does, and the prefix cache stores what feeds them.
    """
    if model not in _GROUPS_CACHE:
        _GROUPS_CACHE[model] = _split_parameters(model)
    return _GROUPS_CACHE[model]


def _split_parameters(model: PreTrainedModel) -> ParameterGroups:
    """Do the work of `split_parameters`: block membership first, then run order."""
    blocks = find_blocks(model)
    names = {id(param): name for name, param in model.named_parameters()}  # tied weights once
    block_of = _block_of_each_parameter(blocks)
    starts, stack_end = _first_starts(model, blocks)
    block_of |= _stage_parts(blocks, block_of, starts, stack_end)
    in_base = {id(param) for param in getattr(model, "base_model", model).parameters()}
    prefix, head = [], []
    per_block: list[list[str]] = [[] for _ in blocks]
    for key, name in names.items():
        if key in block_of:
            per_block[block_of[key]].append(name)
        elif key not in in_base or starts.get(key, -1) > stack_end:
            head.append(name)
        else:
            prefix.append(name)
    return ParameterGroups(tuple(prefix), tuple(tuple(b) for b in per_block), tuple(head))


def _block_of_each_parameter(blocks: Blocks) -> dict[int, int]:
    """Map each block parameter (by identity) to its block; a shared one goes to the lowest."""
    block_of: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for param in block.parameters():
            block_of.setdefault(id(param), index)
    return block_of


def _stage_parts(
    blocks: Blocks, block_of: dict[int, int], starts: dict[int, int], stack_end: int
) -> dict[int, int]:
    """Map each parameter of the stages that lies outside every block and runs within the stack
    to the first block that starts after it; empty for a model without stages."""
    if blocks.stages is None:
        return {}
    block_starts = [
        min(starts.get(id(p), stack_end) for p in block.parameters()) for block in blocks
    ]
    parts = {}
    for param in blocks.stages.parameters():
        start = starts.get(id(param), -1)
        if id(param) not in block_of and 0 <= start < stack_end:
            parts[id(param)] = next(
                (i for i, first in enumerate(block_starts) if first > start), len(blocks) - 1
            )
    return parts


def _first_starts(model: PreTrainedModel, blocks: Blocks) -> tuple[dict[int, int], int]:
    """Run a dummy forward pass; return when each parameter's module first started, by parameter
    identity, and when the last block last finished, on one clock.

    Start time, not finish time, counts: a module owning weights that wraps the whole stack uses
    them before the blocks too, so it must not count as head.
    """
    clock = itertools.count()
    starts: dict[int, int] = {}
    stack_end = -1

    def on_start(module: nn.Module, _args: object) -> None:
        tick = next(clock)
        for param in module.parameters(recurse=False):
            starts.setdefault(id(param), tick)

    def on_stack_end(_module: nn.Module, _args: object, _output: object) -> None:
        nonlocal stack_end
        stack_end = next(clock)

    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    handles = [m.register_forward_pre_hook(on_start) for m in owners]
    handles.append(blocks[-1].register_forward_hook(on_stack_end))
    try:
        _run_dummy_forward(model)
    finally:
        for handle in handles:
            handle.remove()
    if stack_end < 0:
        raise UsageError(
            f"The blocks of {type(model).__name__} did not run on a dummy input, so autoft cannot "
            "tell its embeddings from its head: this architecture is not supported."
        )
    return starts, stack_end


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside, then each submodule's own mode back: a frozen prefix may sit
    in eval mode inside a training model, and `model.train(was_training)` would wake it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _run_dummy_forward(model: PreTrainedModel) -> None:
    """One eval-mode, no-grad pass on a tiny input; each module's training flag is restored."""
    with evaluating(model), torch.no_grad():
        model(**_dummy_input(model))


def _dummy_input(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A one-example input the model accepts: token ids for text, a blank image for vision."""
    param = next(model.parameters())
    if model.main_input_name == "pixel_values":
        size = getattr(model.config, "image_size", _DUMMY_IMAGE_SIZE)  # CNNs (ResNet) take any
        height, width = (size, size) if isinstance(size, int) else size
        shape = (1, model.config.num_channels, height, width)
        return {"pixel_values": torch.zeros(shape, dtype=param.dtype, device=param.device)}
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.arange(1, _DUMMY_LENGTH + 1, device=param.device) % vocab
    return {model.main_input_name: ids.unsqueeze(0)}


def freeze(model: PreTrainedModel, trainable_layers: int) -> int:
    """Let only the head and the top `trainable_layers` blocks train; return trainable elements.

    0 trains the head alone; the model's depth trains everything, embeddings included. Raises
    ValueError outside 0..depth.
    """
    trainable = split_parameters(model).trainable(trainable_layers)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return count_parameters(model, trainable_only=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each tied weight counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
