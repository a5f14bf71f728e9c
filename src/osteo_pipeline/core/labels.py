"""Label schemes: which canonical labels a study trains on and is evaluated on.

Ingest maps every source's labels onto the canonical three (``CANONICAL``); a scheme picks the
classes a model learns, in column order of its probabilities, the positive class last. The
parameter ``label_scheme`` names one; ``LabelScheme.of`` turns the name into the scheme, once.
"""

from __future__ import annotations

from dataclasses import dataclass

CANONICAL = ("normal", "osteopenia", "osteoporosis")


@dataclass(frozen=True)
class LabelScheme:
    """A named, ordered set of classes (binary drops osteopenia)."""

    name: str
    classes: tuple[str, ...]

    @property
    def positive(self) -> str:
        """The class whose probability a binary ROC is drawn on (osteoporosis)."""
        return self.classes[-1]

    def index(self) -> dict[str, int]:
        """Class name -> column of the probability matrix."""
        return {c: i for i, c in enumerate(self.classes)}

    def __str__(self) -> str:
        return self.name

    @classmethod
    def of(cls, scheme: str | LabelScheme) -> LabelScheme:
        """The scheme named ``scheme`` (a scheme passes through); a clear error for an unknown name."""
        if isinstance(scheme, LabelScheme):
            return scheme
        if scheme not in LABEL_SCHEMES:
            raise ValueError(f"label_scheme must be one of {sorted(LABEL_SCHEMES)}, got {scheme!r}")
        return LABEL_SCHEMES[scheme]


LABEL_SCHEMES: dict[str, LabelScheme] = {
    s.name: s for s in (LabelScheme("binary", ("normal", "osteoporosis")), LabelScheme("three_class", CANONICAL))
}
