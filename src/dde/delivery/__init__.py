"""Durable delivery: the ledger (SQLite), the retry policy and the dispatcher."""
