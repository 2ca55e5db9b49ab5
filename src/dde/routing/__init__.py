"""Routing: pure decisions over header datasets, endpoint states and loads."""
