"""The one exception of the stack package."""

from __future__ import annotations


class StackError(Exception):
    """A part of the reference stack cannot be configured, started, stopped or found.

    The message is a complete sentence for the user: what failed, and what to do about it.
    """
