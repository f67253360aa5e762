"""Tests for autoft.params and the declarations built on it: every search parameter is declared
once (common ones in params.py, each adapter's on its class), TrialParams and the space tables
agree with the declarations, and a trial's sampled values split into the common fields and its
adapter's own, which take their one declared default when a space leaves them out.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from autoft.adapters import ADAPTERS, SEARCH_PARAMETERS, get_adapter
from autoft.params import COMMON_PARAMETERS, LATE_PARAMETERS, TrialParams
from autoft.space import OPTIONAL_PARAMETERS, PARAMETERS


def test_trial_params_has_a_field_for_each_common_parameter_with_its_declared_default() -> None:
    fields = {f.name: f for f in dataclasses.fields(TrialParams)}
    common = (*COMMON_PARAMETERS, *LATE_PARAMETERS)
    assert set(fields) - {"adapter_params"} == {spec.name for spec in common}
    for spec in common:
        field = fields[spec.name]
        assert field.type == spec.kind.__name__, spec.name
        if spec.default is None:
            assert field.default is dataclasses.MISSING, spec.name
        else:
            assert field.default == spec.default, spec.name


def test_the_parameters_keep_the_order_trials_sample_them_in() -> None:
    """The same seed draws the same freeze and LoRA trials as before the declarations moved."""
    assert PARAMETERS[:12] == (
        "learning_rate", "head_lr_multiplier", "batch_size", "trainable_layers", "epochs",
        "weight_decay", "warmup_ratio", "preserve_weight", "adapter", "lora_rank", "lora_alpha",
        "head_first_epochs",
    )
    assert OPTIONAL_PARAMETERS == {"preserve_weight": 0.0, "adapter": "freeze",
                                   "lora_rank": None, "lora_alpha": None, "head_first_epochs": 0}
    assert [spec.name for spec in SEARCH_PARAMETERS] == list(PARAMETERS)
    adapter = next(spec for spec in SEARCH_PARAMETERS if spec.name == "adapter")
    assert adapter.choices == tuple(ADAPTERS)


def test_an_adapters_parameters_come_from_the_trial_or_from_its_declaration() -> None:
    sampled = {"learning_rate": 1e-3, "head_lr_multiplier": 10.0, "batch_size": 16,
               "trainable_layers": 2, "epochs": 2, "weight_decay": 0.0, "warmup_ratio": 0.0,
               "adapter": "lora", "lora_rank": 4}
    params = TrialParams.from_sampled(sampled)
    assert params.adapter == "lora" and params.trainable_layers == 2
    assert params.preserve_weight == 0.0 and params.head_first_epochs == 0
    assert params.adapter_params == {"lora_rank": 4}
    lora = get_adapter("lora")
    assert lora.settings(params.adapter_params) == {"lora_rank": 4, "lora_alpha": 16.0}
    assert lora.settings({}) == {"lora_rank": 8, "lora_alpha": 16.0}
    assert get_adapter("freeze").settings(sampled) == {}


def test_declarations_and_words_need_no_torch() -> None:
    """status and the report word trials through the adapters' declarations: importing them, and
    describing a trial of every adapter, must not import the training stack."""
    code = (
        "import sys\n"
        "from autoft.adapters import ADAPTERS\n"
        "from autoft.describe import describe_params\n"
        "import autoft.space\n"
        "for name in ADAPTERS:\n"
        "    for layers in (0, 2, 6):\n"
        "        for short in (False, True):\n"
        "            describe_params({'learning_rate': 1e-4, 'trainable_layers': layers,\n"
        "                             'adapter': name}, 6, short=short)\n"
        "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
