"""The exception types the CLI turns into a single readable line, and the registry lookup
that every registry (activations, inits) uses, so each failure names the valid keys."""

from typing import Mapping, TypeVar

T = TypeVar("T")


class PropbenchError(Exception):
    """A problem the user can fix; its message is one line and names what to change."""


class ConfigError(PropbenchError, ValueError):
    """A configuration value is out of range, inapplicable, or unavailable here."""


class ResultsError(PropbenchError, ValueError):
    """A results folder or file is missing, incomplete or malformed."""


def choose(registry: Mapping[str, T], key: str, what: str) -> T:
    """``registry[key]``, or a ConfigError: '<what>=<key>: unknown; choose one of ...'."""
    try:
        return registry[key]
    except KeyError:
        raise ConfigError(f"{what}={key}: unknown; choose one of {', '.join(registry)}") from None
