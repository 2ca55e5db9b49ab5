"""Destinations: their load and the senders that deliver to them."""
