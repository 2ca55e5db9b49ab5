"""The ledger's schema and its migrations.

Version 1 is the first schema. A migration is a function from the version before to its
own version; :func:`migrate` runs the missing ones in order inside the open transaction,
and refuses a ledger written by a newer version of dde. Tables added later without touching
an existing one (``delivery_claims``, ``delivery_suspects``, ``delivery_transcodings``,
``endpoint_capabilities``, ``instance_variants``, ``delivery_variants``,
``variant_deidentifications``, ``commitments``, ``delivery_commitments``) are created by
:data:`SCHEMA` itself at every open, so they need no version step (an older dde simply
ignores them; on a ledger several nodes share, a node not yet upgraded keeps working beside
upgraded ones, where a version step would make it refuse the ledger). One caveat: a node
older than ``instance_variants`` would send the received bytes for a delivery that should
send a rule's edited variant, so every node is upgraded before rules use ``set``/``remove``
(and one older than ``variant_deidentifications`` would send a de-identified copy under the
received SOP Instance UID: upgrade every node before rules use ``deidentify``).
``shared_documents`` (the configuration the nodes share,
:mod:`dde.store.shared_documents`) is one of them.

One schema text serves both backends: it is written for SQLite, and :func:`schema_for`
renders it for PostgreSQL (identity keys, 64-bit integers, double-precision times).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from dde.store.errors import LedgerError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    patient_id TEXT,
    accession_number TEXT,
    modality TEXT,
    calling_aet TEXT NOT NULL,
    called_aet TEXT NOT NULL,
    source_ip TEXT,
    rule TEXT NOT NULL,
    size INTEGER NOT NULL,
    spool_path TEXT,
    received_at REAL NOT NULL,
    spool_removed_at REAL
);
CREATE INDEX IF NOT EXISTS instances_sop ON instances(sop_instance_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_instance_uid);
CREATE INDEX IF NOT EXISTS instances_spooled ON instances(id) WHERE spool_path IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_patient ON instances(patient_id);
CREATE INDEX IF NOT EXISTS instances_accession ON instances(accession_number);
CREATE INDEX IF NOT EXISTS instances_received ON instances(received_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    endpoint TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('route', 'mirror')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries(endpoint, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries(instance_id);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, endpoint);
CREATE INDEX IF NOT EXISTS deliveries_delivered ON deliveries(delivered_at)
    WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS delivery_claims (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_claims_owner ON delivery_claims(owner);
CREATE TABLE IF NOT EXISTS delivery_suspects (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    since REAL NOT NULL,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS delivery_transcodings (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    transfer_syntax_uid TEXT NOT NULL,
    transcoded_from TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instance_variants (
    id INTEGER PRIMARY KEY,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    rule TEXT NOT NULL,
    spool_path TEXT,
    size INTEGER NOT NULL,
    edits TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_variants_instance ON instance_variants(instance_id);
CREATE TABLE IF NOT EXISTS delivery_variants (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
    variant_id INTEGER NOT NULL REFERENCES instance_variants(id)
);
CREATE TABLE IF NOT EXISTS commitments (
    transaction_uid TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    requested_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'failed')),
    reason TEXT,
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS commitments_pending ON commitments(state, requested_at);
CREATE TABLE IF NOT EXISTS delivery_commitments (
    delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    transaction_uid TEXT NOT NULL REFERENCES commitments(transaction_uid) ON DELETE CASCADE,
    sop_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed', 'failed')),
    reason TEXT,
    requested_at REAL NOT NULL,
    resolved_at REAL,
    PRIMARY KEY (delivery_id, transaction_uid)
);
CREATE INDEX IF NOT EXISTS delivery_commitments_transaction
    ON delivery_commitments(transaction_uid);
CREATE INDEX IF NOT EXISTS delivery_commitments_pending ON delivery_commitments(delivery_id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS delivery_commitments_resolved ON delivery_commitments(resolved_at)
    WHERE resolved_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS variant_deidentifications (
    variant_id INTEGER PRIMARY KEY REFERENCES instance_variants(id),
    method TEXT NOT NULL,
    sop_instance_uid TEXT,
    held_back TEXT
);
CREATE TABLE IF NOT EXISTS endpoint_capabilities (
    endpoint TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    learned_at REAL NOT NULL,
    PRIMARY KEY (endpoint, sop_class_uid, transfer_syntax_uid)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    endpoint TEXT,
    target TEXT,
    count INTEGER NOT NULL DEFAULT 0,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS endpoint_status (
    endpoint TEXT PRIMARY KEY,
    health TEXT NOT NULL,
    breaker TEXT NOT NULL,
    down_since REAL,
    last_error TEXT,
    load INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS study_pins (
    study_instance_uid TEXT NOT NULL,
    grp TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    pinned_at REAL NOT NULL,
    PRIMARY KEY (study_instance_uid, grp)
);
CREATE TABLE IF NOT EXISTS shared_documents (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT
);
"""


Migration = Callable[[Any], None]

MIGRATIONS: dict[int, Migration] = {}
"""``{version: step}``: the step that brings a ledger of ``version - 1`` to ``version``."""


def schema_for(dialect: str) -> str:
    """:data:`SCHEMA` for ``dialect`` (``sqlite`` or ``postgresql``)."""
    if dialect == "sqlite":
        return SCHEMA
    text = re.sub(r"\bid INTEGER PRIMARY KEY\b",
                  "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", SCHEMA)
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)


def migrate(connection: Any, path: object, dialect: str = "sqlite") -> None:
    """Create the tables a new ledger needs; bring an older one up to date (inside the
    caller's transaction on PostgreSQL)."""
    connection.executescript(schema_for(dialect))
    row = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    version = SCHEMA_VERSION if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{path}: ledger schema {version} is newer than this version of "
                          f"dde understands ({SCHEMA_VERSION})")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[step](connection)
    connection.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       (str(SCHEMA_VERSION),))
