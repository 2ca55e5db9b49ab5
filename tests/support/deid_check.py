"""Checks a de-identified dataset against PS3.15 Table E.1-1 (the library's table), element
by element of the input, independently of how the engine walks the dataset: what the
table's code is under the profile's options, and whether the output shows that action.

The choices the table leaves open are restated here from docs/deidentification.md: a
compound code takes its last alternative; C is a whole-day date shift of DA/DT (times kept)
under Modified Dates and the Basic Profile's code otherwise; Patient ID's dummy is the keyed
pseudonym; private attributes are removed unless the profile lists them as safe (with their
creators).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dde.dicom.deid_table import ConfidentialityTable, DeidOption, TableRow
from dde.dicom.deidentify import (
    DUMMY_VALUES,
    Profile,
    SafePrivate,
    date_shift_days,
    patient_pseudonym,
    uid_for,
)

LAST_ALTERNATIVE = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
MARKS = {0x00120062, 0x00120063, 0x00120064, 0x00280303}
"""Patient Identity Removed, De-identification Method (Code Sequence), Longitudinal Temporal
Information Modified: set by the engine whatever the input had."""


def expected_code(row: TableRow, profile: Profile, vr: str) -> str:
    columns = {o.column for o in profile.options if o.column}
    codes = {row.options[c] for c in columns if c in row.options}
    code = row.basic
    if codes:
        code = "C" if "C" in codes else codes.pop()
    shifting = DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in profile.options
    if code == "C" and not (shifting and vr in ("DA", "DT", "TM")):
        code = row.basic
    return LAST_ALTERNATIVE.get(code, code)


def _values(elem: DataElement) -> list[Any]:
    if isinstance(elem.value, MultiValue | list):
        return list(elem.value)
    return [elem.value]


def _shifted(value: str, days: int) -> str | None:
    text = str(value).strip()
    try:
        day = datetime.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (day - datetime.timedelta(days=days)).strftime("%Y%m%d") + text[8:]


def _padded(value: Any, out: Any) -> bool:
    """An odd-length binary value comes back with the one padding byte PS3.5 7.1.1 asks for
    (pydicom adds it on writing)."""
    return isinstance(value, bytes) and isinstance(out, bytes) and len(value) % 2 == 1 \
        and out[:-1] == value and len(out) == len(value) + 1


class TableCheck:
    """Walks the input; :attr:`problems` lists what does not match the table; :attr:`seen`
    counts the codes checked (so a test can tell it checked something)."""

    def __init__(self, table: ConfidentialityTable, profile: Profile, patient_id: str) -> None:
        self.table = table
        self.profile = profile
        self.days = date_shift_days(patient_id, profile.salt)
        self.problems: list[str] = []
        self.seen: dict[str, int] = {}

    def run(self, original: Dataset, output: Dataset) -> TableCheck:
        self.dataset(original, output, "", top=True)
        return self

    def dataset(self, original: Dataset, output: Dataset, path: str, top: bool = False) -> None:
        for elem in original:
            if top and int(elem.tag) in MARKS:
                continue
            self.element(elem, output, f"{path}{elem.tag}", original)

    def fail(self, where: str, elem: DataElement, what: str) -> None:
        self.problems.append(f"{where} {elem.keyword or 'private'}: {what}")

    def safe(self, elem: DataElement, original: Dataset) -> bool:
        """Listed in the profile's safe private attributes (or their creator)."""
        group, element = elem.tag.group, elem.tag.element
        listed = self.profile.safe_private
        if 0x10 <= element <= 0xFF:
            return any((p.creator, p.group) == (str(elem.value), group) for p in listed)
        creator = original.get((group << 16) | (element >> 8)) if element >= 0x1000 else None
        return creator is not None and SafePrivate(str(creator.value), group,
                                                   element & 0xFF) in listed

    def element(self, elem: DataElement, output: Dataset, where: str,
                original: Dataset) -> None:
        out = output.get(elem.tag)
        if elem.tag.is_private and self.safe(elem, original):
            self.count("K")
            if out is None or out.value != elem.value:
                self.fail(where, elem, "a listed safe private attribute not kept as it was")
            return
        if elem.tag.is_private or elem.tag.element == 0:
            self.count("X")
            if out is not None:
                self.fail(where, elem, "private or group length, not removed")
            return
        row = self.table.row_for(int(elem.tag))
        code = "K" if row is None else expected_code(row, self.profile, elem.VR)
        if code == "C" and elem.VR in ("DA", "DT") and not elem.is_empty and any(
                _shifted(v, self.days) is None or (elem.VR == "DA" and len(str(v).strip()) != 8)
                for v in _values(elem)):
            assert row is not None
            code = LAST_ALTERNATIVE.get(row.basic, row.basic)
        self.count(code)
        if code == "X":
            if out is not None:
                self.fail(where, elem, "X expected, still present")
            return
        if out is None:
            self.fail(where, elem, f"{code} expected, removed")
            return
        if code == "Z":
            if not out.is_empty:
                self.fail(where, elem, "Z expected, not empty")
        elif elem.VR == "SQ":
            self.sequence(elem, out, where)
        elif code in ("U", "D") and elem.VR == "UI":
            wanted = [uid_for(str(v), self.profile.salt) if v else v for v in _values(elem)]
            if _values(out) != wanted:
                self.fail(where, elem, f"{code} expected, UID not the salted mapping")
        elif code == "D":
            dummy = DUMMY_VALUES.get(elem.VR[:2], b"\x00" * 8)
            if out.is_empty or (not elem.is_empty and out.value == elem.value
                                and str(out.value) != str(dummy)):
                self.fail(where, elem, "D expected, value kept or empty")
            if int(elem.tag) == 0x00100020 and not elem.is_empty and \
                    out.value != patient_pseudonym(str(elem.value), self.profile.salt):
                self.fail(where, elem, "Patient ID's dummy is not the pseudonym")
        elif code == "C" and elem.VR in ("DA", "DT") and not elem.is_empty:
            if _values(out) != [_shifted(v, self.days) for v in _values(elem)]:
                self.fail(where, elem, "C expected, dates not shifted by the patient's days")
        elif code in ("K", "C", "U") and out.value != elem.value and \
                not _padded(elem.value, out.value):
            self.fail(where, elem, f"{code} expected, value changed")

    def sequence(self, elem: DataElement, out: DataElement, where: str) -> None:
        items, out_items = list(elem.value or []), list(out.value or [])
        if len(items) != len(out_items):
            self.fail(where, elem, "sequence items added or lost")
            return
        for index, (item, out_item) in enumerate(zip(items, out_items, strict=True)):
            self.dataset(item, out_item, f"{where}[{index}]>")

    def count(self, code: str) -> None:
        self.seen[code] = self.seen.get(code, 0) + 1


def walk(dataset: Dataset) -> Iterator[DataElement]:
    """Every element, those in sequence items too."""
    for elem in dataset:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from walk(item)
