"""Issue item 16: with the usual umask 022, the state folder is 0700 and the files with
PACS passwords (``dde.yaml``, ``rules.yaml``), patient data (the ledger and its -wal/-shm,
the spool's files) are 0600; an existing state folder open to others is made private."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.webkit import dicom_bytes

from dde.config import Home, load_settings
from dde.config_store import ConfigStore
from dde.endpoints import registry
from dde.store.ledger import Ledger
from dde.store.spool import Spool

RULES = "rules:\n  - name: default\n    route: {group: storage}\nmirror: [ORTHANC-PROBE]\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_new_state_folder_and_its_configuration_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "var")
    load_settings(home)  # the first use writes dde.yaml with the defaults

    assert mode(home.root) == 0o700
    for folder in (home.spool_dir, home.logs_dir, home.run_dir):
        assert mode(folder) == 0o700, folder
    assert mode(home.config_file) == 0o600


def test_an_existing_open_state_folder_is_made_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "var")
    home.root.mkdir(mode=0o755)
    os.chmod(home.root, 0o755)
    home.config_file.write_text("{}\n")  # 0644, as an older version left it
    home.ensure()
    assert mode(home.root) == 0o700  # what is inside is no longer reachable by others


def test_configuration_writes_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "var")
    load_settings(home)
    store = ConfigStore(home)
    endpoint = store.settings().endpoints[0].model_copy(update={"name": "ORTHANC9"})
    registry.add_endpoint(store, endpoint)
    store.apply_rules(RULES)
    assert mode(home.config_file) == 0o600
    assert mode(home.rules_file) == 0o600


def test_the_ledger_and_its_wal_files_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "var")
    home.ensure()
    ledger = Ledger(home.database)
    try:
        ledger.diagnostics.ping()
        files = [home.database, *(home.database.with_name(home.database.name + suffix)
                                  for suffix in ("-wal", "-shm"))]
        present = [f for f in files if f.exists()]
        assert home.database in present and len(present) == 3, present
        for file in present:
            assert mode(file) == 0o600, file
    finally:
        ledger.close()


def test_an_existing_open_ledger_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "dde.sqlite3"
    Ledger(path).close()
    os.chmod(path, 0o644)
    Ledger(path).close()
    assert mode(path) == 0o600


def test_the_spool_folder_and_files_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert mode(spool.root) == 0o700
    data, _ = dicom_bytes()
    written = spool.path_of(spool.write(b"", data).relative_path)
    assert mode(written) == 0o600
    assert mode(written.parent) == 0o700

    received = tmp_path / "received.dcm"  # as pynetdicom leaves it: the umask's 0644
    received.write_bytes(data)
    assert mode(received) == 0o644
    adopted = spool.path_of(spool.adopt(received).relative_path)
    assert mode(adopted) == 0o600


def test_an_existing_open_spool_folder_is_made_private(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)
    os.chmod(tmp_path / "spool", 0o755)
    Spool(tmp_path / "spool")
    assert mode(tmp_path / "spool") == 0o700

