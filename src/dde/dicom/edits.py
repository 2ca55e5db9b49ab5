"""Tag coercion: set and remove top-level elements of an encoded dataset, splicing bytes.

A rule's ``set:``/``remove:`` becomes a tuple of :class:`SetElement`/:class:`RemoveElement`
(checked once, when the rules are applied: :func:`set_element`, :func:`remove_element`).
At receive time :func:`apply_edits` makes the edited dataset from the received bytes
without decoding it: the top-level elements are walked from their headers (pydicom's
element generator, large values skipped, not read), every untouched element is copied
byte for byte, an edited one is encoded again alone (in the dataset's own transfer syntax
and Specific Character Set), a removed one is left out, a new one goes in tag order, and the
group length element of a changed group, when the dataset has one, is written again.
Pixel data, compressed or not, is copied as it is: nothing here decodes an image.

A deflated dataset is inflated, spliced and deflated again (its inflated bytes change only
where edited). What may not be edited: the file meta group (0002), group lengths, Specific
Character Set, the SOP Class and SOP Instance UIDs (the identity the ledger and every
destination know the instance by), Pixel Data, and sequences (a set value is a single
element value, never a sequence). Pure: no disk, no clock.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_data_element
from pydicom.uid import UID
from pydicom.valuerep import validate_value

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
PIXEL_DATA = 0x7FE00010
PROTECTED = {SPECIFIC_CHARACTER_SET: "SpecificCharacterSet", SOP_CLASS_UID: "SOPClassUID",
             SOP_INSTANCE_UID: "SOPInstanceUID", PIXEL_DATA: "PixelData"}
"""Elements no rule may edit, and why: see the module docstring."""
SETTABLE_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                          "ST", "TM", "UC", "UI", "UR", "UT", "US", "SS", "UL", "SL", "FL",
                          "FD"})
"""The VRs a ``set:`` value may have: text and numbers (no binary, no sequences)."""
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
"""The VRs whose values are encoded in the dataset's Specific Character Set."""
SHOWN_VALUE_LENGTH = 200
"""Longer old values are cut to this many characters in what :func:`apply_edits` reports."""

EditValue = str | int | float | tuple[str | int | float, ...]


class EditError(Exception):
    """An edit that cannot be made: a bad rule (caught at ``rules apply``), or a dataset it
    cannot be made on (at receive time: the instance is refused). No patient data in it."""


@dataclass(frozen=True)
class SetElement:
    """Give the element ``tag`` this value (insert it when the dataset has none)."""

    tag: int
    keyword: str
    vr: str
    value: EditValue


@dataclass(frozen=True)
class RemoveElement:
    """Leave the element ``tag`` out (nothing happens when the dataset has none)."""

    tag: int
    keyword: str


Edit = SetElement | RemoveElement


@dataclass(frozen=True)
class AppliedEdit:
    """What one edit changed in one instance (what ``dde where`` shows). ``old`` is the value
    the instance had (None: it had no such element), ``new`` the value it got (None:
    removed). Values are text as pydicom shows them, the old one cut to
    :data:`SHOWN_VALUE_LENGTH`."""

    tag: str
    keyword: str
    action: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class EditedDataset:
    dataset: bytes
    applied: tuple[AppliedEdit, ...]


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_editable(tag: int, name: str) -> None:
    group, element = tag >> 16, tag & 0xFFFF
    if group == 0x0002:
        raise EditError(f"{name} is in the file meta group (0002): the router writes it")
    if element == 0x0000:
        raise EditError(f"{name} is a group length: the router fixes those itself")
    if group == 0xFFFE:
        raise EditError(f"{name} is an item delimiter, not an element")
    if tag in PROTECTED:
        raise EditError(f"{PROTECTED[tag]} {tag_text(tag)} may not be edited by a rule")


def _values(value: EditValue) -> list[str | int | float]:
    return list(value) if isinstance(value, tuple) else [value]


def set_element(tag: int, value: object) -> SetElement:
    """A checked ``set`` edit: the tag is a dictionary element of a settable VR and the
    value (a scalar or a list for several values) valid for that VR. Raise
    :class:`EditError` saying what is wrong."""
    keyword = keyword_for_tag(tag) or ""
    name = keyword or tag_text(tag)
    _check_editable(tag, name)
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise EditError(f"{name} is not in the DICOM dictionary: its VR is unknown, so it "
                        "can be removed but not set") from None
    if vr not in SETTABLE_VRS:
        raise EditError(f"{name} has VR {vr}: only text and number elements can be set")
    if isinstance(value, list):
        value = tuple(value)
    items = _values(value)  # type: ignore[arg-type]
    if not items or any(not isinstance(v, str | int | float) or isinstance(v, bool)
                        for v in items):
        raise EditError(f"{name}: a value is text, a number, or a list of those")
    for item in items:
        if vr in ("US", "SS", "UL", "SL") and not isinstance(item, int):
            raise EditError(f"{name} has VR {vr}: {item!r} is not a whole number")
        if vr in ("FL", "FD") and not isinstance(item, int | float):
            raise EditError(f"{name} has VR {vr}: {item!r} is not a number")
        text = str(item) if vr not in ("US", "SS", "UL", "SL", "FL", "FD") else item
        try:
            validate_value(vr, text, config.RAISE)
        except (ValueError, OverflowError) as exc:
            raise EditError(f"{name} has VR {vr}: {exc}") from None
    stored: EditValue = (tuple(items) if len(items) > 1 else items[0])
    if vr not in ("US", "SS", "UL", "SL", "FL", "FD"):
        stored = tuple(str(v) for v in items) if len(items) > 1 else str(items[0])
    element = _element(SetElement(tag, keyword, vr, stored))
    try:
        _encode(element, True, False, ["utf_8"] if vr in TEXT_VRS else None)
    except Exception as exc:  # what pydicom refuses to write is a bad value too
        raise EditError(f"{name}: the value cannot be encoded as {vr}: {exc}") from None
    return SetElement(tag, keyword, vr, stored)


def remove_element(tag: int) -> RemoveElement:
    """A checked ``remove`` edit (private and unknown tags may be removed)."""
    keyword = keyword_for_tag(tag) or ""
    _check_editable(tag, keyword or tag_text(tag))
    return RemoveElement(tag, keyword)


def describe(edit: Edit) -> dict[str, object]:
    """An edit as a rule names it (``route explain``, the rule tester)."""
    if isinstance(edit, SetElement):
        value = list(edit.value) if isinstance(edit.value, tuple) else edit.value
        return {"action": "set", "tag": tag_text(edit.tag), "keyword": edit.keyword,
                "vr": edit.vr, "value": value}
    return {"action": "remove", "tag": tag_text(edit.tag), "keyword": edit.keyword}


def _element(edit: SetElement) -> DataElement:
    value = list(edit.value) if isinstance(edit.value, tuple) else edit.value
    return DataElement(edit.tag, edit.vr, value)


def _encode(element: DataElement, little_endian: bool, implicit_vr: bool,
            encodings: list[str] | None) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = little_endian
    out.is_implicit_VR = implicit_vr
    write_data_element(out, element, encodings)
    return out.getvalue()


@dataclass(frozen=True)
class _Span:
    tag: int
    start: int
    end: int
    raw: RawDataElement | DataElement


def _walk(body: bytes, implicit_vr: bool, little_endian: bool) -> list[_Span]:
    """Every top-level element's tag and byte range (top-level elements are contiguous:
    each starts where the one before ends). Values of 64 KiB and more are skipped."""
    stream = io.BytesIO(body)
    spans: list[_Span] = []
    start = 0
    try:
        for element in data_element_generator(stream, implicit_vr, little_endian,
                                              defer_size=1 << 16):
            end = stream.tell()
            spans.append(_Span(int(element.tag), start, end, element))
            start = end
    except Exception as exc:  # the receiver checked the dataset: this is not expected
        raise EditError(f"the dataset cannot be walked: {type(exc).__name__}") from None
    if start != len(body):
        raise EditError("the dataset does not end with a whole element")
    return spans


def _charset(spans: Sequence[_Span]) -> list[str]:
    """The Python codecs of the dataset's Specific Character Set; without one (or with only
    the default repertoire, ISO_IR 6) plain ASCII, which is stricter than pydicom's
    lenient Latin-1 reading: a value the receiver could not read right is refused."""
    terms: list[str] = []
    for span in spans:
        if span.tag == SPECIFIC_CHARACTER_SET:
            try:
                element = _convert(span.raw, None)
                values = element.value if element.VM > 1 else [element.value or ""]
                terms = [str(t).strip() for t in values]
            except Exception:
                terms = []
    if not [t for t in terms if t not in ("", "ISO_IR 6")]:
        return ["ascii"]
    return convert_encodings(terms)


def _convert(raw: RawDataElement | DataElement, encodings: list[str] | None) -> DataElement:
    if isinstance(raw, DataElement):
        return raw
    return convert_raw_data_element(raw, encoding=encodings)


def _shown(raw: RawDataElement | DataElement, encodings: list[str]) -> str:
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
        return f"<{raw.length} bytes>"
    try:
        element = _convert(raw, encodings)
        if element.value is None:  # present, empty
            return ""
        if element.VR == "SQ":
            return f"<sequence of {len(element.value)} items>"
        if isinstance(element.value, bytes):
            return f"<{len(element.value)} bytes>"
        text = str(element.value) if element.VM <= 1 else "\\".join(map(str, element.value))
    except Exception:
        return "<unreadable>"
    return text if len(text) <= SHOWN_VALUE_LENGTH else text[:SHOWN_VALUE_LENGTH] + "…"


def _new_text(edit: SetElement) -> str:
    return "\\".join(map(str, _values(edit.value)))


def _check_charset(edit: SetElement, encodings: list[str]) -> None:
    if edit.vr not in TEXT_VRS:
        return
    for value in _values(edit.value):
        text = str(value)
        if text.isascii():
            continue
        if not any(_encodes(text, codec) for codec in encodings):
            raise EditError(f"{edit.keyword or tag_text(edit.tag)}: the value cannot be "
                            f"written in the instance's Specific Character Set "
                            f"({', '.join(encodings)})")


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def _syntax(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian); a syntax newer than pydicom is explicit VR little
    endian, as every syntax defined after the first three is."""
    syntax = UID(transfer_syntax_uid)
    if not syntax.is_transfer_syntax:
        return False, True
    return bool(syntax.is_implicit_VR), bool(syntax.is_little_endian)


def apply_edits(dataset: bytes, transfer_syntax_uid: str,
                edits: Sequence[Edit]) -> EditedDataset:
    """The edited dataset (no file meta), and what changed. Raise :class:`EditError` when
    the dataset cannot be walked or a value not written in its character set."""
    deflated = transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    body = _inflate(dataset) if deflated else dataset
    implicit_vr, little_endian = _syntax(transfer_syntax_uid)
    spans = _walk(body, implicit_vr, little_endian)
    encodings = _charset(spans)
    by_tag = {edit.tag: edit for edit in edits}
    present = {span.tag: span for span in spans}
    pieces: list[tuple[int, bytes | tuple[int, int]]] = []
    applied: list[AppliedEdit] = []
    changed_groups: set[int] = set()
    for span in spans:
        edit = by_tag.get(span.tag)
        if edit is None:
            pieces.append((span.tag, (span.start, span.end)))
            continue
        changed_groups.add(span.tag >> 16)
        old = _shown(span.raw, encodings)
        if isinstance(edit, RemoveElement):
            applied.append(AppliedEdit(tag_text(edit.tag), edit.keyword, "remove", old, None))
            continue
        pieces.append((span.tag, _encoded(edit, little_endian, implicit_vr, encodings)))
        applied.append(AppliedEdit(tag_text(edit.tag), edit.keyword, "set", old,
                                   _new_text(edit)))
    for edit in edits:
        if isinstance(edit, SetElement) and edit.tag not in present:
            pieces.append((edit.tag, _encoded(edit, little_endian, implicit_vr, encodings)))
            applied.append(AppliedEdit(tag_text(edit.tag), edit.keyword, "set", None,
                                       _new_text(edit)))
            changed_groups.add(edit.tag >> 16)
    pieces.sort(key=lambda piece: piece[0])
    out = _join(body, pieces, changed_groups, present, little_endian, implicit_vr)
    order = {edit.tag: i for i, edit in enumerate(edits)}
    applied.sort(key=lambda a: order[int(a.tag[1:5] + a.tag[6:10], 16)])
    return EditedDataset(_deflate(out) if deflated else out, tuple(applied))


def _encoded(edit: SetElement, little_endian: bool, implicit_vr: bool,
             encodings: list[str]) -> bytes:
    _check_charset(edit, encodings)
    try:
        return _encode(_element(edit), little_endian, implicit_vr, encodings)
    except Exception as exc:
        raise EditError(f"{edit.keyword or tag_text(edit.tag)}: cannot be encoded: "
                        f"{type(exc).__name__}") from None


def _join(body: bytes, pieces: list[tuple[int, bytes | tuple[int, int]]],
          changed_groups: set[int], present: dict[int, _Span], little_endian: bool,
          implicit_vr: bool) -> bytes:
    """The pieces in order, with the group length of each changed group written again."""
    lengths: dict[int, int] = {}
    for tag, piece in pieces:
        group = tag >> 16
        if group in changed_groups and tag & 0xFFFF:
            size = len(piece) if isinstance(piece, bytes) else piece[1] - piece[0]
            lengths[group] = lengths.get(group, 0) + size
    out = bytearray()
    for tag, piece in pieces:
        group = tag >> 16
        if tag & 0xFFFF == 0 and group in changed_groups and tag in present:
            element = DataElement(tag, "UL", lengths.get(group, 0))
            out += _encode(element, little_endian, implicit_vr, None)
        elif isinstance(piece, bytes):
            out += piece
        else:
            out += body[piece[0]:piece[1]]
    return bytes(out)


def _inflate(encoded: bytes) -> bytes:
    try:
        return zlib.decompress(encoded, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise EditError(f"deflated dataset cannot be inflated: {exc}") from None


def _deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()
