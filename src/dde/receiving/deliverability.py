"""Whether the destinations chosen for an instance are known to refuse it, so that the
sender hears a failure now instead of a success the modality takes for "archived".

Known means learned from the presentation-context answers of the router's own associations
(:mod:`dde.store.capabilities`), not older than ``delivery.capability_max_age_seconds``. A
destination refuses an instance when it rejected the instance's (SOP class, transfer
syntax) and transcoding cannot help: the router cannot decode the syntax, transcoding is
off, or the destination rejected every uncompressed syntax for that SOP class too. Anything
not yet learned is assumed deliverable (the first such instance is acknowledged and its
delivery fails with the reason; the next ones are refused).

The answers are read from the ledger at most every :data:`REFRESH_SECONDS` (receivers run
in several processes; one query per instance would cost the hot path).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from dde.dicom.transcoding import UNCOMPRESSED_LITTLE_ENDIAN, can_transcode
from dde.dicom.uids import uid_name
from dde.store.capabilities import EndpointCapabilities
from dde.store.errors import LedgerError

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0


class Undeliverable(Exception):
    """A chosen destination is known to refuse the instance (the message says which and
    why; no patient data)."""


class Deliverability:
    def __init__(self, capabilities: EndpointCapabilities, max_age: float,
                 transcoding: bool) -> None:
        self._capabilities = capabilities
        self._max_age = max_age
        self._transcoding = transcoding
        self._answers: dict[tuple[str, str, str], bool] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def check(self, endpoints: Sequence[str], sop_class: str, syntax: str) -> None:
        """Raise :class:`Undeliverable` if one of ``endpoints`` is known to refuse an
        instance of ``sop_class`` in ``syntax``."""
        answers = self._current()
        for endpoint in endpoints:
            if answers.get((endpoint, sop_class, syntax)) is not False:
                continue
            fallbacks = [s for s in UNCOMPRESSED_LITTLE_ENDIAN if s != syntax]
            if self._transcoding and can_transcode(syntax) and any(
                    answers.get((endpoint, sop_class, s)) is not False for s in fallbacks):
                continue
            if any(accepted for (e, c, _), accepted in answers.items()
                   if (e, c) == (endpoint, sop_class)):
                why = f"{endpoint} refuses {uid_name(syntax)} for {uid_name(sop_class)}"
            else:
                why = f"{endpoint} refuses {uid_name(sop_class)}"
            raise Undeliverable(why)

    def _current(self) -> dict[tuple[str, str, str], bool]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= REFRESH_SECONDS:
                self._read_at = now
                try:
                    self._answers = self._capabilities.answers(self._max_age)
                except LedgerError as exc:  # keep what was known: the ingest goes on
                    log.warning("could not read what the destinations accept: %s", exc)
            return self._answers
