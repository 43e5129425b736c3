"""The exception types the CLI turns into a single readable line, the registry lookup that
every registry (activations, inits, models) uses, so each failure names the valid keys, and
the first line of any error."""

from typing import Mapping, TypeVar

T = TypeVar("T")


class PropbenchError(Exception):
    """A problem the user can fix; its message is one line and names what to change."""


class ConfigError(PropbenchError, ValueError):
    """A configuration value is out of range, inapplicable, or unavailable here."""


class ProbeError(PropbenchError, ValueError):
    """A model or an argument :func:`propbench.probe` cannot work with (meta device, no
    float parameter, an unknown block or output name)."""


class ProbeWarning(UserWarning):
    """The probe saw less than the caller may think: no recognised layer, a tapped module
    that never ran, no activation rows."""


class ResultsError(PropbenchError, ValueError):
    """A results folder or file is missing, incomplete or malformed."""


class FolderInUseError(ResultsError):
    """Another propbench process holds the folder's lock (nothing may be written into it)."""


class WriteError(PropbenchError, OSError):
    """A run could not be written (a full disk, a folder made read-only meanwhile)."""


def choose(registry: Mapping[str, T], key: str, what: str) -> T:
    """``registry[key]``, or a ConfigError: '<what>=<key>: unknown; choose one of ...'."""
    try:
        return registry[key]
    except KeyError:
        raise ConfigError(f"{what}={key}: unknown; choose one of {', '.join(registry)}") from None


def one_line(err: BaseException) -> str:
    """An error's whole message on one line (Hydra's import errors span several)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def first_line(err: BaseException) -> str:
    """The first non-blank line of an error's message (its type's name if it has none)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
