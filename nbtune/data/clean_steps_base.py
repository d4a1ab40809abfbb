"""The base of every cleaning step in `nbtune.data.clean`: spec handling (`_Step`), parameter checks and
`CleanSpecError`. A module of its own so that step modules (`clean_patterns`) and `clean` share it without a cycle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields
from typing import Any, ClassVar, Sequence


class CleanSpecError(ValueError):
    """A cleaning spec names an unknown step or gives it parameters it does not take."""


class _Step(ABC):
    """Shared spec handling: the spec is the name alone, ``{name: primary_value}`` or ``{name: {params}}``."""
    name: ClassVar[str]
    primary: ClassVar[str | None] = None  # the parameter a scalar spec value sets, e.g. {"normalize": "nfc"}
    dataset_level: ClassVar[bool] = False

    @abstractmethod
    def apply(self, text: str) -> str:
        """The cleaned text; every step defines it."""

    def to_spec(self) -> str | dict:
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}  # YAML-safe
        if not changed:
            return self.name
        if list(changed) == [self.primary]:
            return {self.name: changed[self.primary]}
        return {self.name: changed}

    @classmethod
    def from_spec(cls, value: Any = None) -> "_Step":
        if value is None or value is True:
            return cls()
        if isinstance(value, dict):
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise CleanSpecError(f"step '{cls.name}' has no parameter {', '.join(map(repr, unknown))}; "
                                     f"it takes: {', '.join(known) or 'no parameters'}")
            return cls(**value)
        if cls.primary is None:
            raise CleanSpecError(f"step '{cls.name}' takes no single value (found {value!r}); write "
                                 f"'{cls.name}' or {{'{cls.name}': {{param: value}}}}")
        return cls(**{cls.primary: value})


def _choice(step: str, param: str, value: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise CleanSpecError(f"step '{step}': {param} must be one of {', '.join(allowed)}; found {value!r}")
    return value.lower()
