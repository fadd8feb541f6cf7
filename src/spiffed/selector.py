"""Selectors: ``type:value`` facts about a node or workload (``unix:uid:1000``).

The type is the attestor's name (``unix``, ``x509pop``, ``spiffe_id``); the value is
everything after the first colon and may itself contain colons.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Selector", "SelectorError"]

MAX_SELECTOR_LENGTH = 1024


class SelectorError(ValueError):
    """A selector is malformed; the message says how."""


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    """One selector: an attestor type and a value."""

    type: str
    value: str

    def __post_init__(self) -> None:
        if not self.type:
            raise SelectorError(f"selector {self.type}:{self.value!r} has an empty type")
        if ":" in self.type:
            raise SelectorError(f"selector type {self.type!r} must not contain ':'")
        if not self.value:
            raise SelectorError(f"selector of type {self.type!r} has an empty value")
        if len(self.type) + 1 + len(self.value) > MAX_SELECTOR_LENGTH:
            raise SelectorError(
                f"selector {self.type}:{self.value[:32]}... is longer than {MAX_SELECTOR_LENGTH}"
            )
        for part in (self.type, self.value):
            if any(not c.isprintable() for c in part):
                raise SelectorError(f"selector {str(self)!r} contains a control character")

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``type:value`` (the CLI's ``-selector`` form)."""
        kind, sep, value = text.partition(":")
        if not sep:
            raise SelectorError(f"selector {text!r} must be of the form type:value")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"
