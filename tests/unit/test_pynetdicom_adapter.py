"""The pynetdicom adaptations: tied to one pynetdicom version, installed only when asked,
and each one takes hold on the installed pynetdicom."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynetdicom
import pynetdicom.association
import pytest
from pynetdicom import _config, dimse_messages

from dde.dicom import pynetdicom_adapter as adapter


@pytest.fixture
def pristine() -> Iterator[None]:
    """pynetdicom's globals as they were before the test (install changes the process)."""
    saved = (_config.UNRESTRICTED_STORAGE_SERVICE, _config.STORE_SEND_CHUNKED_DATASET,
             _config.STORE_RECV_CHUNKED_DATASET, pynetdicom.association.time,
             dimse_messages.NamedTemporaryFile, tempfile.tempdir, adapter._reactor_poll)
    yield
    (_config.UNRESTRICTED_STORAGE_SERVICE, _config.STORE_SEND_CHUNKED_DATASET,
     _config.STORE_RECV_CHUNKED_DATASET, pynetdicom.association.time,
     dimse_messages.NamedTemporaryFile, tempfile.tempdir, adapter._reactor_poll) = saved


def test_the_installed_pynetdicom_is_the_one_the_adaptations_were_written_for() -> None:
    assert pynetdicom.__version__ == adapter.WRITTEN_FOR
    adapter.check_version()


def test_another_pynetdicom_version_is_refused_with_a_clear_message() -> None:
    with pytest.raises(adapter.UnsupportedPynetdicom, match="written for 3.0.4"):
        adapter.check_version("3.1.0")


def test_install_refuses_another_version(monkeypatch: pytest.MonkeyPatch,
                                         pristine: None) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "2.1.1")
    with pytest.raises(adapter.UnsupportedPynetdicom):
        adapter.install()


def test_importing_the_router_changes_nothing_in_pynetdicom() -> None:
    # a fresh interpreter: import every module that uses the adaptations, install nothing
    probe = ("import pynetdicom.association as a, tempfile\n"
             "from pynetdicom import _config as c, dimse_messages as d\n"
             "import dde.runtime.main, dde.runtime.receiver_process, dde.cli\n"
             "print(c.UNRESTRICTED_STORAGE_SERVICE, c.STORE_SEND_CHUNKED_DATASET,"
             " c.STORE_RECV_CHUNKED_DATASET, a.time.__name__, d.NamedTemporaryFile.__name__)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.split() == ["False", "False", "False", "time",
                                     "NamedTemporaryFile"]


def test_install_sets_the_process_wide_adaptations(tmp_path: Path, pristine: None) -> None:
    _config.UNRESTRICTED_STORAGE_SERVICE = False
    _config.STORE_SEND_CHUNKED_DATASET = False

    adapter.install(reactor_poll=0.0002, stream_to=tmp_path / "incoming")

    assert _config.UNRESTRICTED_STORAGE_SERVICE is True
    assert _config.STORE_SEND_CHUNKED_DATASET is True
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    assert dimse_messages.NamedTemporaryFile is adapter.IncomingFile
    assert tempfile.tempdir == str(tmp_path / "incoming")
    assert isinstance(pynetdicom.association.time, adapter._CappedSleep)


def test_bound_sending_swaps_the_send_queue_and_the_response_getter() -> None:
    taken: list[bool] = []

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        taken.append(block)
        return ("context", "response")

    assoc: Any = SimpleNamespace(dul=SimpleNamespace(to_provider_queue=None),
                                 dimse=SimpleNamespace(get_msg=get_msg))

    adapter.bound_sending(assoc, timeout=5.0)

    assert isinstance(assoc.dul.to_provider_queue, adapter.BoundedSendQueue)
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's look sees nothing
    assert assoc.dimse.get_msg(block=True) == ("context", "response")
    assert taken == [True]


def test_the_pynetdicom_internals_the_adaptations_reach_exist() -> None:
    """Each private name an adaptation touches, on the installed pynetdicom."""
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import AssociationSocket

    assert hasattr(pynetdicom.association, "time")
    assert hasattr(dimse_messages, "NamedTemporaryFile")
    assert hasattr(_config, "STORE_RECV_CHUNKED_DATASET")
    assert "_run_loop_delay" in DULServiceProvider.__init__.__code__.co_names
    assert hasattr(DULServiceProvider, "artim_timer") or "artim_timer" in \
        DULServiceProvider.__init__.__code__.co_names
    assert hasattr(DIMSEServiceProvider, "get_msg")
    assert hasattr(AssociationSocket, "recv")
