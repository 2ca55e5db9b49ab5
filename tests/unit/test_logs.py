"""Issue item 11: repeated lines of pynetdicom and pydicom are kept to one."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from tests.support.datagen import make_instance
from tests.support.unitkit import part10_bytes, split_part10

from dde import logs
from dde.dicom.header import parse_header
from dde.logs import PYNETDICOM_WINDOW, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, RepeatFilter, Clock]]:
    """A handler on the root logger with the filter, as :func:`logs.configure` installs it."""
    clock = Clock()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    repeat_filter = logs.install([handler], RepeatFilter(clock=clock))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream, repeat_filter, clock
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_down_endpoint_logs_the_pynetdicom_errors_once_then_a_reminder(captured) -> None:
    stream, _, clock = captured
    transport = logging.getLogger("pynetdicom.transport")
    for _ in range(60):  # five minutes of probes every 5 s
        transport.error("Association request failed: unable to connect to remote")
        transport.error("TCP Initialisation Error: [Errno 111] Connection refused")
        clock.now += 4.9
    assert lines(stream) == [
        "pynetdicom.transport ERROR Association request failed: unable to connect to remote",
        "pynetdicom.transport ERROR TCP Initialisation Error: [Errno 111] Connection refused",
    ]

    clock.now += PYNETDICOM_WINDOW
    transport.error("TCP Initialisation Error: [Errno 111] Connection refused")

    assert len(lines(stream)) == 3
    assert lines(stream)[2].startswith(
        "pynetdicom.transport ERROR TCP Initialisation Error: [Errno 111] Connection refused "
        "(and 59 identical line(s) in the")


def test_distinct_messages_and_other_loggers_pass(captured) -> None:
    stream, _, _ = captured
    ours = logging.getLogger("dde.test")
    for _ in range(3):
        ours.warning("the same line")
    logging.getLogger("pynetdicom").error("refused by %s", "A")
    logging.getLogger("pynetdicom").error("refused by %s", "B")

    assert lines(stream) == ["dde.test WARNING the same line"] * 3 + [
        "pynetdicom ERROR refused by A", "pynetdicom ERROR refused by B"]


def test_an_instance_with_a_malformed_uid_logs_each_pydicom_warning_once(captured) -> None:
    """The incident: 161 identical "Invalid value for VR UI" lines for one instance."""
    stream, _, clock = captured
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_instance(study_uid="1.2.3.4x_bad", series_uid=generate_uid(), number=1)
        syntax, dataset = split_part10(part10_bytes(ds))
        stream.truncate(0)
        stream.seek(0)
        clock.now += 3600  # what making the instance logged is long forgotten
        header = parse_header(dataset, syntax)
        for _ in range(160):  # every rule that reads it converts the raw value again
            header.dataset.get("StudyInstanceUID")
            parse_header(dataset, syntax).study_instance_uid  # noqa: B018

    invalid = [line for line in lines(stream) if "Invalid value for VR UI" in line]
    assert len(invalid) == 1, lines(stream)


def test_pydicom_lines_are_kept_per_thread(captured) -> None:
    """Another association (another thread) parsing the same value gets its own line."""
    stream, _, _ = captured
    pydicom_log = logging.getLogger("pydicom")

    def parse() -> None:
        for _ in range(5):
            pydicom_log.warning("Invalid value for VR UI: '1.2.x'.")

    parse()
    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()

    assert lines(stream) == ["pydicom WARNING Invalid value for VR UI: '1.2.x'."] * 2


def test_the_table_of_recent_lines_is_bounded() -> None:
    repeat_filter = RepeatFilter(max_keys=10)
    for index in range(100):
        record = logging.LogRecord("pynetdicom", logging.ERROR, __file__, 1,
                                   "refused %d", (index,), None)
        assert repeat_filter.filter(record)
    assert len(repeat_filter._seen) == 10


def test_configure_installs_the_filter_on_the_root_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        logs.configure(verbose=False)
        logs.configure(verbose=False)
        assert [type(f) for f in handler.filters] == [RepeatFilter]
    finally:
        root.handlers[:] = saved
