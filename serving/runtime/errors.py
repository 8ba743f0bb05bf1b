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

    The message is written for the command line, which reads files; where what to do differs
    for a client of the HTTP service, who sends the image as a request body, `upload` says it
    in the service's words. The service answers these with a 4xx status and `for_upload()`;
    every other failure is a 5xx.
    """

    def __init__(self, message: str, *, upload: str | None = None) -> None:
        super().__init__(message)
        self.upload = upload

    def for_upload(self) -> str:
        """The message for a client of the HTTP service."""
        return self.upload or str(self)


class IncompleteImageError(ImageError):
    """An image file that ends before its data does, or whose data is cut up: a copy, download
    or upload that did not finish. `what` says what is wrong; the message adds what to do."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what}; copy the whole file again from its source",
            upload=f"{what}; upload the whole file again",
        )
