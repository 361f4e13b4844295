"""ConfigError, in a module of its own so that the modules whose choices the config is checked
against (devices, weights, architectures) can raise it without importing the config."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user: line breaks in the values it
    quotes (a YAML string, an override from the shell) are shown as \\n."""

    def __init__(self, message: str):
        super().__init__("\\n".join(message.splitlines()))
