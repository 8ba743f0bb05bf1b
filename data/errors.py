"""The error type for problems a user can fix: the command line prints its message, no traceback."""


class AnonlabError(Exception):
    """A problem with the input, the configuration or the environment, explained for a user.

    The message says what is wrong, where, and what to do about it.
    """


class ConfigError(AnonlabError):
    """The configuration is invalid; raised before a stage starts any work."""
