"""ConfigError, in a module of its own so that the modules whose choices the config is checked
against (devices, weights, architectures) can raise it without importing the config."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""
