"""The receiver's transfer syntax preference, the rejection of unknown-only contexts, the
storage classes accepted, and the Error Comment of failure statuses (the engine's pure
negotiation and response encoding, no network)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from dde.config import ReceiverSettings
from dde.dicom import status as dimse
from dde.dicom.engine import commands
from dde.dicom.engine.acceptance import Proposal, agree, decode_proposal
from dde.dicom.engine.acceptor import store_response
from dde.dicom.transfer_syntaxes import is_known_transfer_syntax, order_transfer_syntaxes

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


# -- the engine's negotiation (requests encoded by pynetdicom, an independent encoder) ------


def proposal(*contexts: tuple[str, list[str]]) -> Proposal:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "DYNAMIC_DICOM_MW"
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    built = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * number + 1
        built.append(context)
    primitive.presentation_context_definition_list = built
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return decode_proposal(pdu.encode()[6:])


def negotiate(request: Proposal) -> list[tuple[int, int, str]]:
    """(context id, result, transfer syntax) as pynetdicom reads our A-ASSOCIATE-AC."""
    agreement = agree(request, max_pdu=16384, preferred=DEFAULT[0], sender_rest=DEFAULT[1])
    pdu = A_ASSOCIATE_AC()
    pdu.decode(agreement.answer)
    results = pdu.to_primitive().presentation_context_definition_results_list
    answered = [(int(c.context_id), int(c.result), str(c.transfer_syntax[0])) for c in results]
    assert {i: syntax for i, result, syntax in answered if result == 0} == \
        {i: pair[1] for i, pair in agreement.accepted.items()}
    return answered


def test_negotiation_accepts_the_preferred_syntax() -> None:
    result = negotiate(proposal((CTImageStorage, STORESCU["-xs"]),
                                (CTImageStorage, STORESCU["-xd"])))

    assert result == [(1, 0, EXPLICIT), (3, 0, EXPLICIT)]


def test_negotiation_rejects_a_context_of_unknown_syntaxes_only() -> None:
    result = negotiate(proposal((CTImageStorage, [UNKNOWN]), (CTImageStorage, [UNKNOWN, RLE]),
                                (Verification, [IMPLICIT])))

    assert [(i, r) for i, r, _ in result] == [(1, 0x04), (3, 0), (5, 0)]
    assert result[1][2] == RLE


def test_private_storage_classes_are_accepted_and_other_services_are_not() -> None:
    """Storage commitment is accepted: a PACS the router asked to commit reports on it."""
    result = negotiate(proposal(("1.2.826.0.1.3680043.9.9999.1", [EXPLICIT]),
                                (PatientRootQueryRetrieveInformationModelFind, [EXPLICIT]),
                                (ModalityWorklistInformationFind, [EXPLICIT]),
                                ("1.2.840.10008.5.1.4.39.1", [EXPLICIT]),  # colour palette
                                ("1.2.840.10008.1.20.1", [EXPLICIT])))  # storage commitment

    assert [(i, r) for i, r, _ in result] == [(1, 0), (3, 0x03), (5, 0x03), (7, 0), (9, 0)]


def test_the_request_is_read_as_sent() -> None:
    request = proposal((CTImageStorage, [EXPLICIT]))

    assert (request.calling_aet, request.called_aet, request.max_pdu) == \
        ("STORESCU", "DYNAMIC_DICOM_MW", 16384)
    assert request.contexts == ((1, CTImageStorage, (EXPLICIT,)),)


# -- Error Comment ------------------------------------------------------------------------------


def store_command() -> commands.Command:
    return commands.decode(commands.c_store_rq(5, CTImageStorage, "1.2.3"))


def test_success_carries_no_comment() -> None:
    response = commands.decode(store_response(store_command(), dimse.SUCCESS, "stored"))

    assert response.status == dimse.SUCCESS and response.error_comment is None
    assert response.responded_to == 5 and response.affected_sop_instance_uid == "1.2.3"


def test_a_failure_carries_its_reason() -> None:
    response = commands.decode(store_response(
        store_command(), dimse.CANNOT_UNDERSTAND, "pixel data is shorter than its geometry"))

    assert response.status == dimse.CANNOT_UNDERSTAND
    assert response.error_comment == "pixel data is shorter than its geometry"


def test_an_error_comment_fits_an_lo() -> None:
    comment = dimse.error_comment("deflated dataset of 1234567 bytes inflates to more than the "
                                  "67108864 bytes accepted (a deflate bomb?)\\\n\x00é")

    assert len(comment) <= 64
    assert comment.endswith("...")
    assert all(c.isascii() and c.isprintable() and c != "\\" for c in comment)
