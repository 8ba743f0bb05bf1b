"""The `annotation` config section: where labels come from and how to reach Label Studio.

`url` left unset (null) is the address of the local server `annotate serve` starts,
`http://<serve.host>:<serve.port>` (loopback when it listens on every interface), so that moving
`serve.port` moves push, pull and status with it; set it to reach another server.

Credentials are never part of it: they come from the environment (`ANONLAB_LS_TOKEN` for the
API; `ANONLAB_LS_USERNAME` and `ANONLAB_LS_PASSWORD` for the admin user `annotate serve`
creates). A `url` that carries a user or password (`http://user:pass@host`) is refused, here
and by the client, with an error that shows the URL without them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data.config import CredentialInConfig, Section

TOKEN_ENV = "ANONLAB_LS_TOKEN"
USERNAME_ENV = "ANONLAB_LS_USERNAME"
PASSWORD_ENV = "ANONLAB_LS_PASSWORD"


def _after_scheme(url: str) -> tuple[str, str]:
    scheme, sep, rest = url.partition("://")
    return (scheme + sep, rest) if sep else ("", url)


def redact_url(url: str) -> str:
    """`url` with any user and password before its host replaced by `***`."""
    scheme, rest = _after_scheme(url)
    if "@" not in rest:
        return url
    # The last '@' ends the user information: a password may hold '@', '/', '?' or '#'.
    return f"{scheme}***@{rest.rpartition('@')[2]}"


def url_credentials_error(url: str, where: str) -> str | None:
    """Why `url` may not be used (it carries a user or password), or None when it may."""
    if "@" not in _after_scheme(url)[1]:
        return None
    return (
        f"{where} '{redact_url(url)}' carries a user or password; credentials never go in the "
        f"config or in a URL (they would reach params.yaml, logs and files). Remove them from "
        f"the URL and set {TOKEN_ENV} (the API token) in the environment; `annotate serve` "
        f"takes its admin user from {USERNAME_ENV} and {PASSWORD_ENV}"
    )


def url_host(host: str) -> str:
    """`host` as a URL writes it; a server bound to every interface is reached on loopback."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ServeConfig(Section):
    host: str
    port: int = Field(ge=1, le=65535)
    # Label Studio's own database and uploads; relative to the project root.
    data_dir: str


class AnnotationConfig(Section):
    # `export`: convert `export_file` (a Label Studio JSON export) offline, as `dvc repro` does
    # on the synthetic ground truth; `server`: push to and pull from Label Studio at `url`.
    source: Literal["export", "server"]
    export_file: str
    # Unset (null): `serve_url(serve)`, the server `annotate serve` starts; validated, it is a URL.
    url: str
    # Label Studio refuses titles shorter than 3 characters.
    project_title: str = Field(min_length=3)
    batch_size: int = Field(ge=1, le=10000)
    timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0, le=10)
    # `annotate push`: the registry champion's detections at or above this score become
    # pre-annotations.
    champion_min_score: float = Field(ge=0, lt=1)
    # `annotate push`: the independent detector whose faces the pre-annotation does not cover
    # queue an image first (`annotation.mining`); `none` turns it off. Its faces below
    # `second_opinion_min_score` are not counted.
    second_opinion: Literal["centerface", "none"]
    second_opinion_min_score: float = Field(gt=0, lt=1)
    serve: ServeConfig

    @model_validator(mode="before")
    @classmethod
    def _url_from_serve(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("url") is None:
            serve = data.get("serve")
            if isinstance(serve, dict):
                serve = ServeConfig.model_validate(serve)
            if isinstance(serve, ServeConfig):
                data = {**data, "url": serve_url(serve)}
        return data

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        problem = url_credentials_error(value, "the URL")
        if problem:
            raise CredentialInConfig(problem)
        return value


def serve_url(serve: ServeConfig) -> str:
    """Where the server `annotate serve` starts with `serve` answers."""
    return f"http://{url_host(serve.host)}:{serve.port}"
