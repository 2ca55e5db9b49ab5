"""A permanent refusal by a destination is visible and retryable, never silently dropped.

Orthanc 1.10 rejects at association negotiation what its configuration does not accept (a
transfer syntax outside ``AcceptedTransferSyntaxes``, or a SOP class it does not know when
``UnknownSopClassAccepted`` is false), although the router itself accepted the instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom.uid import UID, generate_uid
from tests.support.datagen import make_instance, write_series
from tests.support.faults import deliveries, sop_instance_uids
from tests.support.fixtures import OrthancFactory
from tests.support.orthanc import RunningOrthanc, free_port, storescu, wait_until
from tests.support.router import ROUTER_AET, InProcessRouter, router_settings, start_router

from dde.cli import main as dde_main
from dde.stack.orthanc import OrthancProcess, render_orthanc_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.8.498.77.1")
SYNTAX_GROUPS = (
    "DeflatedTransferSyntaxAccepted", "JpegTransferSyntaxAccepted",
    "Jpeg2000TransferSyntaxAccepted", "JpegLosslessTransferSyntaxAccepted",
    "JpipTransferSyntaxAccepted", "Mpeg2TransferSyntaxAccepted", "RleTransferSyntaxAccepted",
    "Mpeg4TransferSyntaxAccepted", "H265TransferSyntaxAccepted",
)


def _write_config(orthanc: RunningOrthanc, changes: dict[str, Any]) -> None:
    config = render_orthanc_config(orthanc.name, orthanc.aet, orthanc.dicom_port,
                                   orthanc.http_port, orthanc.storage_dir)
    config.update(changes)
    orthanc.process.config_path.write_text(json.dumps(config, indent=2))


@pytest.fixture
def restrictive_orthanc(tmp_path: Path) -> Iterator[Any]:
    """``start(changes)``: an Orthanc storage with its configuration changed by ``changes``."""
    started: list[RunningOrthanc] = []

    def start(changes: dict[str, Any]) -> RunningOrthanc:
        folder = tmp_path / "restrictive"
        folder.mkdir(parents=True)
        dicom_port, http_port = free_port(), free_port()
        process = OrthancProcess(folder / "orthanc.json", folder / "orthanc.log", http_port,
                                 dicom_port, name="ORTHANC1")
        orthanc = RunningOrthanc("ORTHANC1", "ORTHANC1", dicom_port, http_port, process.url,
                                 process, folder / "storage")
        _write_config(orthanc, changes)
        process.start()
        started.append(orthanc)
        process.wait_ready()
        return orthanc

    yield start
    for orthanc in started:
        orthanc.kill()


def _dde(home: Path, *args: str) -> Any:
    result = CliRunner().invoke(dde_main, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.output


def _where(home: Path, uid: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_dde(home, "where", uid, "--json"))
    return document


def _send_with_storescu(files: list[Path], port: int) -> None:
    storescu(files, port, ROUTER_AET)  # Explicit VR Little Endian, proposed as such


def _send_with_dde(files: list[Path], port: int) -> None:
    # DCMTK's storescu proposes only the storage SOP classes it knows; `dde send` proposes
    # the file's own (SOP class, transfer syntax).
    result = CliRunner().invoke(dde_main, ["send", "--port", str(port), "--json",
                                           *(str(f) for f in files)])
    assert result.exit_code == 0, result.output


def _private_class_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in (1, 2, 3):
        ds = make_instance(study_uid=study, series_uid=series, number=number)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
        path = folder / f"private{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Refusal:
    orthanc_changes: dict[str, Any]
    make_files: Callable[[Path], list[Path]]
    send: Callable[[list[Path], int], None]
    named: str
    """What the delivery's last_error must name."""
    acceptable_options: tuple[str, ...]
    """storescu options that make plain CT files acceptable to the restrictive Orthanc."""
    router_changes: dict[str, Any]
    """The router acknowledges every one (refuse_undeliverable off) and, for a syntax
    refusal, does not transcode (the fallback has its own test): the ledger's failure path."""


REFUSALS = {
    "transfer-syntax": Refusal(
        {"AcceptedTransferSyntaxes": [IMPLICIT_VR_LITTLE_ENDIAN],
         **dict.fromkeys(SYNTAX_GROUPS, False)},
        lambda folder: write_series(folder, 3), _send_with_storescu,
        "Explicit VR Little Endian", ("-xi",),
        {"receiver": {"refuse_undeliverable": False}, "delivery": {"transcode_max_bytes": 0}},
    ),
    "unknown-sop-class": Refusal(
        {"UnknownSopClassAccepted": False}, _private_class_files, _send_with_dde,
        PRIVATE_SOP_CLASS, (), {"receiver": {"refuse_undeliverable": False}},
    ),
}


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_permanent_refusal_is_failed_with_its_reason_and_can_be_retried(
    reason: str, restrictive_orthanc: Any, orthanc_factory: OrthancFactory, tmp_path: Path
) -> None:
    case = REFUSALS[reason]
    storage: RunningOrthanc = restrictive_orthanc(case.orthanc_changes)
    probe = orthanc_factory("ORTHANC-PROBE")
    home = tmp_path / "router-home"
    settings = router_settings([storage], probe, **case.router_changes)
    router: InProcessRouter | None = start_router(home, settings)
    try:
        assert router is not None
        files = case.make_files(tmp_path / "refused")
        uids = set(sop_instance_uids(files))
        case.send(files, router.port)  # the router itself acknowledges every one

        # The instance still reaches the other destination.
        probe.wait_for_sop_instance_uids(uids, timeout=15)
        ledger = router.ledger
        wait_until(lambda: len(deliveries(ledger, storage.name, "failed")) == len(uids), 15,
                   f"every delivery to {storage.name} failed")
        for row in deliveries(ledger, storage.name):
            assert row["attempts"] == 1, "a permanent refusal was retried"
            assert "presentation context rejected" in row["last_error"]
            assert case.named in row["last_error"]

        # A refused instance does not hold back what the destination does accept.
        acceptable = write_series(tmp_path / "acceptable", 2)
        acceptable_uids = set(sop_instance_uids(acceptable))
        storescu(acceptable, router.port, ROUTER_AET, *case.acceptable_options)
        storage.wait_for_sop_instance_uids(acceptable_uids, timeout=15)
        assert storage.sop_instance_uids() == acceptable_uids

        uid = sorted(uids)[0]
        document = _where(home, uid)
        by_endpoint = {d["endpoint"]: d for d in document["deliveries"]}
        assert by_endpoint[storage.name]["state"] == "failed"
        assert case.named in by_endpoint[storage.name]["last_error"]
        assert by_endpoint[probe.name]["state"] == "delivered"
        failed_id = by_endpoint[storage.name]["id"]
        router.wait_idle(15)
        queue = json.loads(_dde(home, "queue", "--json"))
        assert queue["counts"][storage.name] == {"failed": len(uids),
                                                 "delivered": len(acceptable_uids)}
        print(f"\n{reason}: {by_endpoint[storage.name]['last_error']}")

        # Retry one while the router is stopped: it becomes pending again, not yet sent.
        router.stop()
        router = None
        assert "was failed" in _dde(home, "queue", "retry", str(failed_id))
        again = next(d for d in _where(home, uid)["deliveries"] if d["id"] == failed_id)
        assert again["state"] == "pending" and again["attempts"] == 0

        # The PACS is reconfigured to accept it and the router comes back: the retried one
        # is delivered; the others stay failed until an operator retries them too.
        storage.stop()
        _write_config(storage, {})
        storage.start_again()
        router = start_router(home, settings)
        router.wait_idle(20)
        assert storage.sop_instance_uids() == acceptable_uids | {uid}
        again = next(d for d in _where(home, uid)["deliveries"] if d["id"] == failed_id)
        assert again["state"] == "delivered"
        assert len(deliveries(router.ledger, storage.name, "failed")) == len(uids) - 1
        assert f"{len(uids) - 1} failed deliveries queued again" in _dde(
            home, "queue", "retry", "--failed")
        storage.wait_for_sop_instance_uids(uids, timeout=15)
        router.wait_idle(20)
        assert not deliveries(router.ledger, state="failed")
    finally:
        if router is not None:
            router.stop()
