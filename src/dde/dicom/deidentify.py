"""De-identification of one dataset by the PS3.15 Annex E Basic Application Level
Confidentiality Profile and the options a rule chooses; pure: a dataset in, a new dataset
out (the input is not changed, pixel data are never touched).

The actions come from the standard's Table E.1-1, read from a library
(:mod:`dde.dicom.deid_table`, which says why that one). What this module decides, because
the table leaves it to the implementation:

- **Compound codes** (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``) pick by the
  attribute's Type in the IOD, which the table does not carry. The last alternative is
  taken: it keeps every IOD valid whatever the Type (Z for ``X/Z``, D for the others with D,
  U for ``X/Z/U*``: a reference sequence stays, its instance UIDs replaced).
- **U**: a UID is replaced by ``2.25.<n>``, ``n`` the first 128 bits of
  HMAC-SHA256(salt, UID) made an RFC 9562 version-8 UUID. The same UID gives the same
  replacement under one salt on every node, so studies, series and references stay
  together; another salt gives unrelated UIDs. Every UID attribute the table marks U (or D)
  goes through the one mapping, in sequences too, and the file meta's Media Storage SOP
  Instance UID with them.
- **D**: a dummy of the element's VR (text ``ANONYMOUS``, date 19000101, number 0, UIDs
  replaced as for U); Patient ID's is a keyed pseudonym (``DDE-`` and 20 hex digits of
  HMAC-SHA256 under the salt) so that a destination keeps patients apart; a sequence keeps
  its items, each de-identified by the table.
- **C** (clean) is carried out for dates under Retain Longitudinal Temporal Information with
  Modified Dates: DA and DT dates move back by a whole number of days (1–3650) derived from
  the salt and the patient's original ID, the same shift for every instance of a patient;
  times stay. Any other C (free text, AE titles) is done as the Basic Profile's action:
  removing more than the option allows is never less private.
- **Private attributes** are removed. No library ships the standard's list of safe private
  attributes (Table E.3.10-1), so Retain Safe Private keeps only those the profile lists
  (:class:`SafePrivate`: private creator, group, element offset), the operator's word, as
  they are; their private creators stay with them.
- **Group lengths** (gggg,0000) are removed: they would be wrong after the edits.
- Added: Patient Identity Removed YES, De-identification Method (the code meanings),
  De-identification Method Code Sequence (CID 7050), Longitudinal Temporal Information
  Modified (UNMODIFIED, MODIFIED or REMOVED).

An instance marked Burned In Annotation YES is held back (pixels are not cleaned here)
unless the profile allows it; so is one whose elements cannot be decoded (fail closed: the
reason names the error's type, never a value).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dde.dicom.deid_table import (
    ConfidentialityTable,
    DeidOption,
    TableRow,
    basic_profile_code,
    load_table,
)

SUPPORTED_OPTIONS = frozenset({
    DeidOption.RETAIN_SAFE_PRIVATE, DeidOption.RETAIN_UIDS, DeidOption.RETAIN_DEVICE_IDENTITY,
    DeidOption.RETAIN_INSTITUTION_IDENTITY, DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
    DeidOption.RETAIN_LONGITUDINAL_DATES, DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
})
"""The options carried out; the others are refused with :data:`NOT_OFFERED`'s reason."""
NOT_OFFERED: dict[DeidOption, str] = {
    DeidOption.CLEAN_DESCRIPTORS: "free text is not cleaned here (its attributes are "
                                  "removed or emptied as the Basic Profile says)",
    DeidOption.CLEAN_STRUCTURED_CONTENT: "structured report content items are not cleaned",
    DeidOption.CLEAN_GRAPHICS: "graphics and overlays are not cleaned",
    DeidOption.CLEAN_PIXEL_DATA: "pixel data are not cleaned (burned-in annotation is out "
                                 "of scope)",
    DeidOption.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "pixel data are not cleaned",
}
_EXCLUSIVE = (DeidOption.RETAIN_LONGITUDINAL_DATES,
              DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES)
_ALTERNATIVE = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}
DUMMY_TEXT = "ANONYMOUS"
DUMMY_VALUES: dict[str, Any] = {
    "AE": DUMMY_TEXT, "AS": "000Y", "CS": DUMMY_TEXT, "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT, "PN": DUMMY_TEXT, "SH": DUMMY_TEXT, "ST": DUMMY_TEXT,
    "UC": DUMMY_TEXT, "UT": DUMMY_TEXT, "UR": "urn:dde:anonymous", "AT": 0,
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0,
}
"""D: a non-empty value of each VR; the binary VRs get eight zero bytes."""
_MAX_SHIFT_DAYS = 3650
_DATE_SHIFT_CONTEXT = b"dde date shift\x00"
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
PATIENT_ID = 0x00100020
_PSEUDONYM_CONTEXT = b"dde patient id\x00"


class OptionError(ValueError):
    """An option name is unknown, not offered or in conflict; the message lists the valid
    names."""


def parse_options(names: Iterable[str]) -> frozenset[DeidOption]:
    """The options a rule names, in kebab case (``retain-uids``); unknown, not-offered and
    conflicting names are refused with a message that lists the valid ones."""
    valid = ", ".join(sorted(o.value for o in SUPPORTED_OPTIONS))
    chosen: set[DeidOption] = set()
    for name in names:
        try:
            option = DeidOption(name)
        except ValueError:
            raise OptionError(f"unknown option {name!r} (valid: {valid})") from None
        if option in NOT_OFFERED:
            raise OptionError(f"option {name!r} is not offered: {NOT_OFFERED[option]} "
                              f"(valid: {valid})")
        chosen.add(option)
    if all(o in chosen for o in _EXCLUSIVE):
        raise OptionError(f"{_EXCLUSIVE[0].value} and {_EXCLUSIVE[1].value} exclude each "
                          "other (full dates or shifted dates)")
    return frozenset(chosen)


class SafePrivate(NamedTuple):
    """A private attribute known to be safe, as PS3.15 E.3.10 names one: its private
    creator, its (odd) group and its element offset in the creator's block (the ``yy`` of
    ``(gggg,xxyy)``). Written ``"GEMS_PARM_01 (0043,xx39)"``."""

    creator: str
    group: int
    offset: int

    def __str__(self) -> str:
        return f"{self.creator} ({self.group:04X},xx{self.offset:02X})"


_SAFE_PRIVATE = re.compile(r"^(\S.*?)\s*\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$")


def parse_safe_private(text: str) -> SafePrivate:
    """``"CREATOR (gggg,xxyy)"``; :class:`OptionError` when it is not that or the group is
    not private (odd)."""
    match = _SAFE_PRIVATE.match(text.strip())
    if match is None or int(match[2], 16) % 2 == 0 or int(match[2], 16) < 9:
        raise OptionError(f"safe private attribute {text!r}: write it 'CREATOR (gggg,xxyy)' "
                          "with an odd group, e.g. 'GEMS_PARM_01 (0043,xx39)'")
    return SafePrivate(match[1], int(match[2], 16), int(match[3], 16))


@dataclass(frozen=True)
class Profile:
    """What one route's de-identification does: the Basic Profile, the options, the salt
    (never shown: ``repr`` leaves it out), the private attributes Retain Safe Private keeps
    and whether burned-in annotation may pass."""

    salt: bytes = field(repr=False)
    options: frozenset[DeidOption] = frozenset()
    allow_burned_in: bool = False
    safe_private: frozenset[SafePrivate] = frozenset()

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("the de-identification salt is empty")
        parse_options(o.value for o in self.options)
        check_safe_private(self.options, self.safe_private)


def check_safe_private(options: frozenset[DeidOption],
                       safe_private: frozenset[SafePrivate]) -> None:
    """Retain Safe Private and a list of safe private attributes go together."""
    retains = DeidOption.RETAIN_SAFE_PRIVATE in options
    if retains and not safe_private:
        raise OptionError(f"{DeidOption.RETAIN_SAFE_PRIVATE.value} keeps the private "
                          "attributes listed in safe_private, and none is listed (no "
                          "library ships PS3.15 Table E.3.10-1)")
    if safe_private and not retains:
        raise OptionError("safe_private is used with the option "
                          f"{DeidOption.RETAIN_SAFE_PRIVATE.value}")


@dataclass(frozen=True)
class ElementAction:
    """What was done to one element: where (tags from the top, ``[i]`` for a sequence
    item), its keyword and the action code carried out. Never its value."""

    path: str
    keyword: str
    code: str


@dataclass(frozen=True)
class Deidentified:
    """The de-identified copy and what was done, element by element (for ``dde where`` and
    the rule tester: which attributes changed, never their values)."""

    dataset: Dataset
    actions: tuple[ElementAction, ...]


@dataclass(frozen=True)
class HeldBack:
    """Not de-identified, not to be sent on a de-identified route; ``reason`` is shown."""

    reason: str


DeidResult = Deidentified | HeldBack
BURNED_IN_REASON = ("held back: burned-in annotation (Burned In Annotation is YES; pixel "
                    "data are not cleaned, a rule may allow it with allow_burned_in: true)")


def uid_for(uid: str, salt: bytes) -> str:
    """The replacement of ``uid`` under ``salt``: ``2.25.`` and a version-8 UUID's integer
    (at most 44 characters, within the UI limit of 64)."""
    digest = bytearray(hmac.new(salt, uid.encode("ascii", "replace"), hashlib.sha256)
                       .digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
    return f"2.25.{int.from_bytes(digest, 'big')}"


def patient_pseudonym(patient_id: str, salt: bytes) -> str:
    """Patient ID's dummy (D): a keyed pseudonym, so that a destination still keeps the
    patients apart (one dummy for all would merge them into one patient there)."""
    digest = hmac.new(salt, _PSEUDONYM_CONTEXT + patient_id.encode("utf-8", "replace"),
                      hashlib.sha256).hexdigest()
    return f"DDE-{digest[:20].upper()}"


def date_shift_days(patient_id: str, salt: bytes) -> int:
    """How many days Modified Dates moves a patient's dates back (1–3650)."""
    digest = hmac.new(salt, _DATE_SHIFT_CONTEXT + patient_id.encode("utf-8", "replace"),
                      hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % _MAX_SHIFT_DAYS + 1


def deidentify(dataset: Dataset, profile: Profile,
               table: ConfidentialityTable | None = None) -> DeidResult:
    """De-identify a copy of ``dataset`` (with its file meta, if any)."""
    if str(dataset.get("BurnedInAnnotation", "")).strip().upper() == "YES" \
            and not profile.allow_burned_in:
        return HeldBack(BURNED_IN_REASON)
    table = table or load_table()
    try:
        run = _Run(profile, table, str(dataset.get("PatientID", "") or ""))
        out = copy.deepcopy(dataset)  # bytes are shared, not copied: pixel data cost nothing
        run.dataset(out, "")
        meta = getattr(out, "file_meta", None)
        if meta is not None and MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
            run.element(meta, meta[MEDIA_STORAGE_SOP_INSTANCE_UID], "")
        _mark(out, profile)
    except Exception as exc:  # fail closed: what cannot be de-identified is not sent
        # The exception's type only: pydicom's messages may quote a value.
        return HeldBack(f"held back: cannot de-identify ({type(exc).__name__})")
    return Deidentified(out, tuple(run.actions))


def _mark(dataset: Dataset, profile: Profile) -> None:
    """The attributes that say how the instance was de-identified (PS3.15 E.1.1)."""
    chosen = sorted(profile.options, key=lambda o: o.code[0])
    methods = [basic_profile_code(), *(o.code for o in chosen)]
    items = []
    for value, meaning in methods:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning for _, meaning in methods]
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    if DeidOption.RETAIN_LONGITUDINAL_DATES in profile.options:
        dataset.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in profile.options:
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        dataset.LongitudinalTemporalInformationModified = "REMOVED"


def _tag_text(tag: BaseTag) -> str:
    return f"({tag.group:04X},{tag.element:04X})"


class _Run:
    """One de-identification: the table's columns for the profile, the UID mapping and the
    date shift, and the actions carried out."""

    def __init__(self, profile: Profile, table: ConfidentialityTable, patient_id: str) -> None:
        self.table = table
        self.salt = profile.salt
        self.columns = frozenset(c for o in profile.options if (c := o.column) is not None)
        self.shift = (date_shift_days(patient_id, profile.salt)
                      if DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in profile.options
                      else None)
        self.safe = profile.safe_private
        self.safe_creators = frozenset((p.creator, p.group) for p in self.safe)
        self.uids: dict[str, str] = {}
        self.actions: list[ElementAction] = []

    def uid(self, value: str) -> str:
        if not value:
            return value
        if value not in self.uids:
            self.uids[value] = uid_for(value, self.salt)
        return self.uids[value]

    def dataset(self, dataset: Dataset, path: str) -> None:
        for elem in list(dataset):
            self.element(dataset, elem, path)

    def element(self, dataset: Dataset, elem: DataElement, path: str) -> None:
        where = path + _tag_text(elem.tag)
        if elem.tag.is_private:
            kept = self.safe and self.safe_private(dataset, elem)
            if not kept:
                del dataset[elem.tag]
            self.actions.append(ElementAction(where, "", "K" if kept else "X"))
            return
        if elem.tag.element == 0:
            del dataset[elem.tag]
            return
        row = self.table.row_for(int(elem.tag))
        if row is None:
            if elem.VR == "SQ":
                self.items(elem, where)
            return
        code = self.code(row, elem)
        self.apply(dataset, elem, code, where, row)

    def safe_private(self, dataset: Dataset, elem: DataElement) -> bool:
        """A listed private attribute, or the private creator of a listed one."""
        group, element = elem.tag.group, elem.tag.element
        if 0x0010 <= element <= 0x00FF:
            return (str(elem.value).strip(), group) in self.safe_creators
        creator = dataset.get(BaseTag((group << 16) | (element >> 8))) \
            if element >= 0x1000 else None
        return creator is not None and SafePrivate(
            str(creator.value).strip(), group, element & 0xFF) in self.safe

    def code(self, row: TableRow, elem: DataElement) -> str:
        code = row.code(self.columns)
        if code == "C" and not (self.shift is not None and elem.VR in ("DA", "DT", "TM")):
            code = row.basic
        return _ALTERNATIVE.get(code, code)

    def items(self, elem: DataElement, where: str) -> None:
        for index, item in enumerate(elem.value or []):
            self.dataset(item, f"{where}[{index}]>")

    def apply(self, dataset: Dataset, elem: DataElement, code: str, where: str,
              row: TableRow) -> None:
        if code == "C" and not self.clean_date(elem):
            code = _ALTERNATIVE.get(row.basic, row.basic)
        if code == "X":
            del dataset[elem.tag]
        elif code == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else elem.empty_value
        elif elem.VR == "SQ" and code in ("D", "K", "U"):
            self.items(elem, where)
        elif code in ("D", "U") and elem.VR == "UI":
            elem.value = self.remapped(elem.value)
        elif code == "D" and elem.tag == PATIENT_ID and elem.value:
            elem.value = patient_pseudonym(str(elem.value), self.salt)
        elif code == "D":
            elem.value = DUMMY_VALUES.get(elem.VR[:2], b"\x00" * 8)
        self.actions.append(ElementAction(where, elem.keyword, code))

    def remapped(self, value: Any) -> Any:
        if isinstance(value, MultiValue | list):
            return [self.uid(str(v)) for v in value]
        return self.uid(str(value)) if value else value

    def clean_date(self, elem: DataElement) -> bool:
        """Move DA and DT dates back by the patient's shift (times stay); False when a value
        is not a full date (then the Basic Profile's action is carried out)."""
        if elem.VR == "TM" or elem.value in (None, ""):
            return True
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        shifted = [_shifted(str(v), self.shift or 0, elem.VR) for v in values]
        if any(s is None for s in shifted):
            return False
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        return True


def _shifted(value: str, days: int, vr: str) -> str | None:
    """A full date (DA, or DT's first eight digits) moved back; None for anything else (a
    range, a year alone)."""
    text = value.strip()
    if len(text) < 8 or (vr == "DA" and len(text) != 8) or text[8:9] not in ("", *"0123456789"):
        return None
    try:
        day = datetime.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    moved = day - datetime.timedelta(days=days)
    return moved.strftime("%Y%m%d") + text[8:]


def encode_part10(dataset: Dataset) -> bytes:
    """The Part-10 bytes of a (de-identified) dataset in its own transfer syntax, from its
    file meta; pixel data are written as they are."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ValueError("the dataset has no file meta with a Transfer Syntax UID")
    if UID(meta.TransferSyntaxUID).is_transfer_syntax:
        plain = BytesIO()
        dcmwrite(plain, dataset, enforce_file_format=True)
        return plain.getvalue()
    # A syntax newer than pydicom 3.0 (Deflated Image Frame Compression), which dcmwrite
    # refuses: the file meta and the dataset written apart, the dataset in the encoding it
    # was read in (explicit VR little endian when unknown).
    implicit, little = getattr(dataset, "original_encoding", (None, None))
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    buffer.is_implicit_VR, buffer.is_little_endian = bool(implicit), little is not False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def write_part10(dataset: Dataset, path: Path) -> None:
    """Write :func:`encode_part10`'s bytes to ``path`` (the caller makes it durable)."""
    path.write_bytes(encode_part10(dataset))
