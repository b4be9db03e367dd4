"""Settings and their errors: what every process may import without the CLI or the model."""

from config.settings import (
    SHIPPED_MODEL,
    Destination,
    Settings,
    UserError,
    build_settings,
    parse_destination,
)

__all__ = [
    "SHIPPED_MODEL",
    "Destination",
    "Settings",
    "UserError",
    "build_settings",
    "parse_destination",
]
