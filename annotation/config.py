"""The `annotation` config section: where labels come from and how to reach Label Studio.

Credentials are never part of it: they come from the environment (`ANONLAB_LS_TOKEN` for the
API; `ANONLAB_LS_USERNAME` and `ANONLAB_LS_PASSWORD` for the admin user `annotate serve`
creates).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data.config import Section

TOKEN_ENV = "ANONLAB_LS_TOKEN"
USERNAME_ENV = "ANONLAB_LS_USERNAME"
PASSWORD_ENV = "ANONLAB_LS_PASSWORD"


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
    url: str
    # Label Studio refuses titles shorter than 3 characters.
    project_title: str = Field(min_length=3)
    batch_size: int = Field(ge=1, le=10000)
    timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0, le=10)
    serve: ServeConfig
