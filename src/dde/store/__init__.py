"""The store: the only place with SQL and files — the ledger (database, schema, one
repository per consumer) and the spool."""
