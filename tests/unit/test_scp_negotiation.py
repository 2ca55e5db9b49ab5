"""The receiver's transfer syntax preference, the rejection of unknown-only contexts, the
Error Comment of failure statuses, and C-STORE commands without Affected SOP Instance UID
(pure functions and pynetdicom's negotiation, no network)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pynetdicom import _config, build_context
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dde.config import ReceiverSettings
from dde.dicom import pynetdicom_adapter
from dde.dicom import status as dimse
from dde.dicom.transfer_syntaxes import (
    is_known_transfer_syntax,
    order_proposed_contexts,
    order_transfer_syntaxes,
)
from dde.receiving.scp import acceptor_order, store_response

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
UNKNOWN = "1.2.3.4.99"

DEFAULT = ReceiverSettings().transfer_syntax_order()

# What storescu +C proposes with each -x? option for an uncompressed file (DCMTK 3.6.7,
# little endian host): the option's syntax first, then the uncompressed ones.
STORESCU = {
    "-x=": [EXPLICIT, BIG_ENDIAN, IMPLICIT],
    "-xb": [BIG_ENDIAN, EXPLICIT, IMPLICIT],
    "-xi": [IMPLICIT],
    "-xs": [JPEG_LOSSLESS, EXPLICIT, BIG_ENDIAN, IMPLICIT],
    "-xr": [RLE, EXPLICIT, BIG_ENDIAN, IMPLICIT],
    "-xd": [DEFLATED, EXPLICIT, BIG_ENDIAN, IMPLICIT],
}


@pytest.mark.parametrize("option", sorted(STORESCU))
def test_the_default_prefers_explicit_then_implicit_little_endian(option: str) -> None:
    ordered = order_transfer_syntaxes(STORESCU[option], *DEFAULT)

    assert ordered[0] == (IMPLICIT if option == "-xi" else EXPLICIT)


def test_then_the_senders_order_among_known_syntaxes() -> None:
    proposed = [UNKNOWN, RLE, JPEG_LOSSLESS, DEFLATED]

    assert order_transfer_syntaxes(proposed, *DEFAULT) == [RLE, JPEG_LOSSLESS, DEFLATED]


def test_only_unknown_syntaxes_leave_nothing() -> None:
    assert order_transfer_syntaxes([UNKNOWN, "1.2.840.113619.5.2"], *DEFAULT) == []


def test_newer_standard_syntaxes_than_pydicom_are_known() -> None:
    assert is_known_transfer_syntax("1.2.840.10008.1.2.8.1")  # deflated image frames
    assert is_known_transfer_syntax("1.2.840.10008.1.2.4.110")  # JPEG XL lossless
    assert not is_known_transfer_syntax(UNKNOWN)


def test_a_receiver_may_prefer_the_senders_order() -> None:
    settings = ReceiverSettings(transfer_syntax_preference=["sender"])

    assert order_transfer_syntaxes(STORESCU["-xs"], *settings.transfer_syntax_order()) \
        == STORESCU["-xs"]


def test_without_sender_only_the_listed_syntaxes_are_accepted() -> None:
    settings = ReceiverSettings(transfer_syntax_preference=["implicit-le", JPEG_BASELINE])
    order = settings.transfer_syntax_order()

    assert order == ([IMPLICIT, JPEG_BASELINE], False)
    assert order_transfer_syntaxes([EXPLICIT, JPEG_BASELINE, IMPLICIT], *order) \
        == [IMPLICIT, JPEG_BASELINE]
    assert order_transfer_syntaxes([RLE], *order) == []


def test_a_private_syntax_named_in_the_preference_is_accepted() -> None:
    order = ReceiverSettings(transfer_syntax_preference=[UNKNOWN, "sender"]) \
        .transfer_syntax_order()

    assert order_transfer_syntaxes([EXPLICIT, UNKNOWN], *order) == [UNKNOWN, EXPLICIT]


@pytest.mark.parametrize("preference", [[], ["explicit"], ["sender", "explicit-le"],
                                        ["explicit-le", EXPLICIT], ["1.2..3"], ["1.2.x"]])
def test_an_invalid_preference_is_refused(preference: list[str]) -> None:
    with pytest.raises(ValidationError):
        ReceiverSettings(transfer_syntax_preference=preference)


def test_storage_classes_pynetdicom_negotiates_itself_get_the_preferred_syntax_first() -> None:
    assert acceptor_order([EXPLICIT, IMPLICIT])[:2] == [EXPLICIT, IMPLICIT]
    assert len(acceptor_order([EXPLICIT])) == len(set(acceptor_order([EXPLICIT])))


# -- pynetdicom's negotiation, with the adaptation -------------------------------------------


def proposed(*contexts: tuple[str, list[str]]) -> list[PresentationContext]:
    built = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * number + 1
        built.append(context)
    return built


def negotiate(contexts: list[PresentationContext]) -> list[PresentationContext]:
    order_proposed_contexts(contexts, *DEFAULT)
    previous = _config.UNRESTRICTED_STORAGE_SERVICE
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    try:
        result, _ = pynetdicom_adapter.negotiate_storage_contexts(
            contexts, [build_context(Verification)])
    finally:
        _config.UNRESTRICTED_STORAGE_SERVICE = previous
    return result


def test_negotiation_accepts_the_preferred_syntax() -> None:
    result = negotiate(proposed((CTImageStorage, STORESCU["-xs"]),
                                (CTImageStorage, STORESCU["-xd"])))

    assert [(cx.result, cx.transfer_syntax[0]) for cx in result] == [(0, EXPLICIT), (0, EXPLICIT)]


def test_negotiation_rejects_a_context_of_unknown_syntaxes_only() -> None:
    result = negotiate(proposed((CTImageStorage, [UNKNOWN]), (CTImageStorage, [UNKNOWN, RLE]),
                                (Verification, [IMPLICIT])))

    assert [(cx.context_id, cx.result) for cx in result] == [(1, 0x04), (3, 0), (5, 0)]
    assert result[0].transfer_syntax  # the A-ASSOCIATE-AC needs one, even for a rejection
    assert result[1].transfer_syntax == [RLE]


def test_install_puts_the_negotiation_in_place() -> None:
    import pynetdicom.acse

    pynetdicom_adapter.install()

    assert vars(pynetdicom.acse)["negotiate_unrestricted"] \
        is pynetdicom_adapter.negotiate_storage_contexts


# -- C-STORE commands without Affected SOP Instance UID --------------------------------------


def command(**elements: Any) -> io.BytesIO:
    ds = Dataset()
    ds.CommandGroupLength = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    encoded = encode(ds, True, True)
    assert encoded is not None
    return io.BytesIO(encoded)


@pytest.mark.parametrize("uid", [None, ""])
def test_a_store_command_without_instance_uid_gets_the_placeholder(uid: str | None) -> None:
    elements: dict[str, Any] = {"AffectedSOPClassUID": CTImageStorage, "CommandField": 1,
                                "MessageID": 1, "Priority": 0, "CommandDataSetType": 0}
    if uid is not None:
        elements["AffectedSOPInstanceUID"] = uid

    decoded = pynetdicom_adapter.complete_store_commands(command(**elements), True, True)

    assert decoded.AffectedSOPInstanceUID == pynetdicom_adapter.MISSING_UID


def test_other_commands_are_left_alone() -> None:
    decoded = pynetdicom_adapter.complete_store_commands(
        command(AffectedSOPClassUID=Verification, CommandField=0x0030, MessageID=1,
                CommandDataSetType=0x0101), True, True)

    assert "AffectedSOPInstanceUID" not in decoded


# -- Error Comment ------------------------------------------------------------------------------


def test_success_is_a_bare_status() -> None:
    assert store_response(dimse.SUCCESS, "stored") == dimse.SUCCESS


def test_a_failure_carries_its_reason() -> None:
    response = store_response(dimse.CANNOT_UNDERSTAND, "pixel data is shorter than its geometry")

    assert isinstance(response, Dataset)
    assert response.Status == dimse.CANNOT_UNDERSTAND
    assert response.ErrorComment == "pixel data is shorter than its geometry"


def test_an_error_comment_fits_an_lo() -> None:
    comment = dimse.error_comment("deflated dataset of 1234567 bytes inflates to more than the "
                                  "67108864 bytes accepted (a deflate bomb?)\\\n\x00é")

    assert len(comment) <= 64
    assert comment.endswith("...")
    assert all(c.isascii() and c.isprintable() and c != "\\" for c in comment)
