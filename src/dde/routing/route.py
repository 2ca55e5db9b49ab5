"""Where one instance goes (:class:`Route`), and what a routing decision may read of the
ledger while it is made (:class:`PinView`).

The decision runs inside the ingest transaction: the pins and queue depths it reads through
a :class:`PinView` cannot change before the rows its :class:`Route` implies are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dde.dicom.edits import Edit
from dde.routing.deidentify_action import DeidentifyAction

Pin = tuple[str, str, str]
"""(study_instance_uid, endpoint, group)."""


class PinView(Protocol):
    """Study pins and queue depths, as the ledger holds them now."""

    def pin_for(self, study_instance_uid: str, group: str | None = None) -> str | None: ...

    def queued_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Route:
    """Where one instance goes, as the router decided inside the ingest transaction."""

    rule: str
    destinations: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    pin: Pin | None = None
    """(study_instance_uid, endpoint, group) to persist when this route created a pin."""
    pins: tuple[Pin, ...] = ()
    """More pins of the same form (one per group the rules routed through)."""
    discard: bool = False
    reason: str = ""
    variants: tuple[tuple[str, str], ...] = ()
    """(destination or mirror, rule) for each one that gets a rule's edited (or
    de-identified) bytes; the
    others get the instance as received."""
    edits: tuple[tuple[str, tuple[Edit, ...]], ...] = ()
    """(rule, its edits) for each rule named in ``variants`` that has edits."""
    deidentify: tuple[tuple[str, DeidentifyAction], ...] = ()
    """(rule, its de-identification) for each rule named in ``variants`` that has one."""

    def all_pins(self) -> tuple[Pin, ...]:
        return ((self.pin,) if self.pin is not None else ()) + self.pins

    def variant_of(self, destination: str) -> str | None:
        """The rule whose edited bytes ``destination`` gets (None: as received)."""
        return next((rule for name, rule in self.variants if name == destination), None)

    def edits_of(self, rule: str) -> tuple[Edit, ...]:
        return next((edits for name, edits in self.edits if name == rule), ())

    def deidentify_of(self, rule: str) -> DeidentifyAction | None:
        return next((action for name, action in self.deidentify if name == rule), None)
