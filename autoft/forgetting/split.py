"""The base data's split, once per study, into the part the search checks and the audit part
that only the reported numbers use (autoft.audit): stored with the prepared study, so every worker
and every resume checks the same part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

AUDIT_SHARE = 0.5
# Below these a held-out half would be too small to say anything: documents of a ratings matrix
# (20 documents still give 45 pairs per half), and pairs, examples, texts or questions otherwise.
MIN_UNITS = {"documents": 20, "pairs": 100, "examples": 100, "texts": 100, "questions": 100}


@dataclass(frozen=True)
class BaseSplit:
    """Which base-data units (documents, pairs, examples, texts or questions, in file order) the
    audit holds back.

    Stored with the prepared study, so every worker and every resume checks the same part.
    """

    unit: str
    total: int
    audit: tuple[int, ...]
    note: str | None = None

    @property
    def held_out(self) -> bool:
        return bool(self.audit)

    def search(self) -> list[int]:
        """The units the search checks: every one the audit does not hold back."""
        held = set(self.audit)
        return [i for i in range(self.total) if i not in held]

    def parts(self, max_examples: int, check_examples: int) -> dict[str, list[int]]:
        """Unit indices of the full check, the quick slice (its first items) and the audit."""
        search = self.search()[:max_examples]
        audit = list(self.audit)[:max_examples] if self.held_out else search
        return {"search": search, "quick": search[: min(check_examples, max_examples)],
                "audit": audit}

    def to_dict(self) -> dict:
        return asdict(self) | {"audit": list(self.audit)}

    @classmethod
    def from_dict(cls, values: dict | None) -> BaseSplit | None:
        return cls(**values | {"audit": tuple(values["audit"])}) if values else None


def split_base(total: int, unit: str, seed: int) -> BaseSplit:
    """Hold back a seeded half of the units for the audit, or none of a set too small to split."""
    if total < MIN_UNITS[unit]:
        note = (f"the base data has only {total} {unit} (fewer than {MIN_UNITS[unit]}), too few "
                f"to hold some back: the audit reuses the {unit} the search checked")
        return BaseSplit(unit, total, (), note)
    rng = np.random.default_rng(seed)
    audit = sorted(rng.permutation(total)[: int(round(total * AUDIT_SHARE))].tolist())
    return BaseSplit(unit, total, tuple(audit))
