"""The runtime's errors: what an operator can act on, with a message that says what and where.

The runtime ships without the training packages, so it has its own error types; the command
line prints their message without a traceback, as it does for `data.errors.AnonlabError`.
"""


class ServingError(Exception):
    """A problem with the artifact, an input or the environment, explained for an operator."""


class ArtifactError(ServingError):
    """The model artifact is missing, incomplete, altered, or from a newer schema."""


class ImageError(ServingError):
    """An input image cannot be anonymized: not decodable, unsupported, or over a size limit.

    The HTTP service answers these with a 4xx status; every other failure is a 5xx.
    """
