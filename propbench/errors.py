"""The one exception type that the CLI turns into a single readable line."""


class PropbenchError(Exception):
    """A problem the user can fix; its message is one line and names what to change."""


class ConfigError(PropbenchError, ValueError):
    """A configuration value is out of range, inapplicable, or unavailable here."""


class ResultsError(PropbenchError, ValueError):
    """A results folder or file is missing, incomplete or malformed."""
