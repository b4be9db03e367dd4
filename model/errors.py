"""Errors every layer may raise and catch without importing the decoders."""

from __future__ import annotations


class DecodeError(ValueError):
    """A file that cannot become pixels; the message is shown to users and stored."""
