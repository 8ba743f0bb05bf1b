"""A small HTTP client for the Label Studio API: projects, tasks, imports and exports.

Authentication takes either kind of token Label Studio hands out, from ANONLAB_LS_TOKEN:
- a legacy token (Account & Settings > Legacy Token; what `annotate serve` sets up) is sent as
  `Authorization: Token <token>`;
- a personal access token (a JWT refresh token) is exchanged at `POST /api/token/refresh` for a
  short-lived access token, sent as `Authorization: Bearer <access>`, and exchanged again when
  the server refuses it as expired.
Transient failures (connection refused or reset, timeouts, 502/503/504) are retried
`retries` times with exponential backoff, then raised as an AnonlabError that names the URL.
The token itself never appears in an error message or a log line, and a URL with a user or
password in it is refused (see `annotation.config.url_credentials_error`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from annotation.config import TOKEN_ENV, AnnotationConfig, url_credentials_error
from data.errors import AnonlabError

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({502, 503, 504})
# A page of the task list; bounded so that a response stays small with large task data.
PAGE_SIZE = 500
# Backoff before retry n (0-based) is BACKOFF_S * 2**n, at most MAX_BACKOFF_S.
BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
# Exports of a large project take much longer to build than any other request.
EXPORT_TIMEOUT_FACTOR = 10
NOT_RUNNING_HINT = (
    "is Label Studio running? start it with `anonlab annotate serve` or set annotation.url"
)


class TokenRefused(AnonlabError):
    """The server refused the token in ANONLAB_LS_TOKEN (HTTP 401 or 403)."""


@dataclass(frozen=True)
class TaskCounts:
    """One task as status counts it: its annotations by whether they were cancelled (skipped)."""

    task_id: int
    image: str
    annotated: int  # annotations submitted with a result
    cancelled: int  # annotations the annotator skipped
    annotators: tuple[int, ...]  # user ids (`completed_by`) of the submitted annotations


def jwt_type(token: str) -> str | None:
    """The `token_type` claim ("refresh", "access") of a JWT, None when `token` is no JWT.

    Legacy tokens are 40 hex characters; a personal access token is a signed JWT whose payload
    says which kind it is. The signature is the server's business, so it is not checked here.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    kind = claims.get("token_type")
    return kind if isinstance(kind, str) else "access"


class LabelStudio:
    """The Label Studio API at `url`, authenticated with `token` (legacy or personal access)."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0, retries: int = 3) -> None:
        # Every message and file that names the server shows this URL: it holds no secret.
        problem = url_credentials_error(url, "the Label Studio URL")
        if problem:
            raise AnonlabError(problem)
        if not token:
            raise AnonlabError(_missing_token_message())
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self._token = token
        self._kind = jwt_type(token)
        self._access: str | None = None
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"LabelStudio({self.url!r})"  # never the token

    def close(self) -> None:
        self._session.close()

    # -- projects -----------------------------------------------------------------------------

    def find_project(self, title: str) -> int | None:
        """The id of the project titled `title` (the oldest if several are), else None."""
        ids = [
            p["id"]
            for p in self._pages("/api/projects", {"title": title})
            if p.get("title") == title
        ]
        if len(ids) > 1:
            log.warning(
                "%d Label Studio projects are titled %r at %s; using the oldest (id %d)",
                len(ids),
                title,
                self.url,
                min(ids),
            )
        return min(ids) if ids else None

    def require_project(self, title: str) -> int:
        """The id of the project titled `title`; AnonlabError saying what to do if there is none."""
        project = self.find_project(title)
        if project is None:
            raise AnonlabError(
                f"no Label Studio project titled '{title}' at {self.url}: run "
                "`anonlab annotate push` first, or set annotation.project_title"
            )
        return project

    def get_project(self, project_id: int) -> dict[str, Any] | None:
        """The project's settings (title, label_config, model_version, ...), None if absent."""
        return self.request("GET", f"/api/projects/{project_id}", missing_ok=True)

    def create_project(self, title: str, label_config: str) -> int:
        body = {"title": title, "label_config": label_config}
        project = self.request("POST", "/api/projects", json=body, idempotent=False)
        log.info("created Label Studio project %r (id %d) at %s", title, project["id"], self.url)
        return int(project["id"])

    def update_label_config(self, project_id: int, xml: str) -> None:
        self.request("PATCH", f"/api/projects/{project_id}", json={"label_config": xml})

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Show annotators the predictions of `model_version` (Label Studio shows only one)."""
        self.request("PATCH", f"/api/projects/{project_id}", json={"model_version": model_version})

    def local_storage_paths(self, project_id: int) -> list[str]:
        """The folders of the project's local-files storages, as the server sees them."""
        storages = self.request("GET", "/api/storages/localfiles", params={"project": project_id})
        return [s["path"] for s in storages]

    def add_local_storage(self, project_id: int, path: str, title: str) -> None:
        """Let the project's tasks read images under `path` through `/data/local-files/`.

        Label Studio serves a local file only to projects with a storage whose folder holds it.
        The storage is never synced: tasks are imported by push, with predictions.
        """
        body = {"project": project_id, "path": path, "title": title, "use_blob_urls": False}
        self.request("POST", "/api/storages/localfiles", json=body, idempotent=False)

    # -- tasks --------------------------------------------------------------------------------

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project, as the task list returns it (data, annotation counts)."""
        page, seen = 1, 0
        while True:
            params = {"project": project_id, "page": page, "page_size": PAGE_SIZE}
            body = self.request("GET", "/api/tasks", params=params)
            batch = body.get("tasks", [])
            yield from batch
            seen += len(batch)
            if not batch or seen >= int(body.get("total", 0)):
                return
            page += 1

    def task_image_urls(self, project_id: int) -> set[str]:
        """`data.image` of every task: what push compares against to import each image once."""
        return {t["data"]["image"] for t in self.tasks(project_id) if "image" in t.get("data", {})}

    def task_counts(self, project_id: int) -> list[TaskCounts]:
        """Per task: submitted and skipped annotations, and who submitted them."""
        out = []
        for t in self.export_tasks(project_id):
            done = [a for a in t.get("annotations", []) if not a.get("was_cancelled")]
            out.append(
                TaskCounts(
                    task_id=int(t["id"]),
                    image=str(t.get("data", {}).get("image", "")),
                    annotated=len(done),
                    cancelled=len(t.get("annotations", [])) - len(done),
                    annotators=tuple(_user_id(a.get("completed_by")) for a in done),
                )
            )
        return out

    def users(self) -> dict[int, str]:
        """User id -> e-mail, for naming annotators (`completed_by` holds the id)."""
        body = self.request("GET", "/api/users")
        users = body.get("results", []) if isinstance(body, dict) else body
        return {int(u["id"]): str(u.get("email") or u["id"]) for u in users}

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        """Create `tasks` (each `{"data": ..., "predictions": [...]}`); returns how many."""
        if not tasks:
            return 0
        body = self.request(
            "POST", f"/api/projects/{project_id}/import", json=tasks, idempotent=False
        )
        return int(body.get("task_count", len(tasks)))

    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The JSON export of every task (annotated or not), with annotations and predictions."""
        params = {"exportType": "JSON", "download_all_tasks": "true"}
        return self.request(
            "GET",
            f"/api/projects/{project_id}/export",
            params=params,
            timeout_s=self.timeout_s * EXPORT_TIMEOUT_FACTOR,
        )

    # -- transport ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool = True,
        missing_ok: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one API request and return its JSON body, or raise an AnonlabError.

        A request that is not `idempotent` (an import) is retried only when it never reached
        the server, so that a timeout after the server took it cannot create tasks twice.
        `missing_ok`: a 404 returns None.
        """
        url = self.url + path
        where = f"{method} {url}"
        problem = ""
        refreshed = False
        attempt = 0
        while True:
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers={"Authorization": self._authorization()},
                    timeout=timeout_s or self.timeout_s,
                )
            except requests.RequestException as e:
                problem = _describe(e)
                retry = idempotent or _never_sent(e)
            else:
                status = response.status_code
                if status == 401 and self._kind == "refresh" and not refreshed:
                    # The access token expired: exchange the personal access token again.
                    self._access, refreshed = None, True
                    continue
                if status in (401, 403):
                    raise TokenRefused(self._refused_message(where, response))
                if status == 404 and missing_ok:
                    return None
                if status in TRANSIENT_STATUS:
                    problem = f"HTTP {status}"
                    retry = idempotent or status == 503
                elif status >= 400:
                    raise AnonlabError(
                        f"Label Studio answered {where} with HTTP {status}: "
                        f"{self._detail(response)}"
                    )
                else:
                    return _json_body(response, where)
            if not retry or attempt >= self.retries:
                break
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt)
            log.warning("%s failed (%s); retrying in %.1f s", where, problem, delay)
            time.sleep(delay)
            attempt += 1
        raise AnonlabError(
            f"Label Studio at {self.url} did not answer {method} {path} "
            f"({problem}; {attempt + 1} attempt(s)): {NOT_RUNNING_HINT}"
        )

    def _authorization(self) -> str:
        if self._kind is None:
            return f"Token {self._token}"
        if self._kind == "access":
            return f"Bearer {self._token}"
        if self._access is None:
            self._access = self._refresh()
        return f"Bearer {self._access}"

    def _refresh(self) -> str:
        """Exchange the personal access token (a JWT refresh token) for an access token."""
        url = self.url + "/api/token/refresh"
        for attempt in range(self.retries + 1):
            try:
                response = self._session.post(
                    url, json={"refresh": self._token}, timeout=self.timeout_s
                )
            except requests.RequestException as e:
                problem = _describe(e)
            else:
                if response.status_code in (400, 401, 403):
                    raise TokenRefused(self._refused_message(f"POST {url}", response))
                if response.status_code not in TRANSIENT_STATUS:
                    access = _json_body(response, f"POST {url}").get("access")
                    if not access:
                        raise AnonlabError(
                            f"Label Studio at {self.url} gave no access token for the personal "
                            f"access token in {TOKEN_ENV}"
                        )
                    return str(access)
                problem = f"HTTP {response.status_code}"
            if attempt < self.retries:
                time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt))
        raise AnonlabError(
            f"Label Studio at {self.url} did not answer POST /api/token/refresh ({problem}; "
            f"{self.retries + 1} attempt(s)): {NOT_RUNNING_HINT}"
        )

    def _refused_message(self, where: str, response: requests.Response) -> str:
        kind = "personal access token" if self._kind else "legacy token"
        return (
            f"Label Studio at {self.url} refused the {kind} in {TOKEN_ENV} "
            f"(HTTP {response.status_code} on {where}: {self._detail(response)}). Set "
            f"{TOKEN_ENV} to a token of a user of this server (Account & Settings in Label "
            "Studio); a legacy token needs legacy tokens enabled for the organization "
            "(`anonlab annotate serve` does that)"
        )

    def _detail(self, response: requests.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            if "html" in response.headers.get("Content-Type", ""):
                return "an HTML page, not the API: is annotation.url the address of Label Studio?"
            text = response.text.strip().splitlines()
            detail = text[0] if text else response.reason
        else:
            detail = body
            if isinstance(body, dict):
                detail = body.get("validation_errors") or body.get("detail") or body
        # The server does not echo tokens today; scrub in case a proxy or a later version does.
        return str(detail).replace(self._token, "***")[:500]

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The results of a paginated list (`{"results": [...], "next": ...}`)."""
        page = 1
        while True:
            body = self.request("GET", path, params={**params, "page": page, "page_size": 100})
            if isinstance(body, list):  # some versions answer without pagination
                yield from body
                return
            yield from body.get("results", [])
            if not body.get("next"):
                return
            page += 1


def connect(cfg: AnnotationConfig) -> LabelStudio:
    """The client for `cfg.url`, with the token from ANONLAB_LS_TOKEN."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise AnonlabError(_missing_token_message())
    return LabelStudio(cfg.url, token, timeout_s=cfg.timeout_s, retries=cfg.retries)


def _missing_token_message() -> str:
    return (
        f"{TOKEN_ENV} is not set: set it to your Label Studio access token (Account & Settings "
        "> Personal Access Token, or the legacy token that `anonlab annotate serve` set up)"
    )


def _json_body(response: requests.Response, where: str) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise AnonlabError(
            f"Label Studio answered {where} with something that is not JSON "
            f"(HTTP {response.status_code}, {response.headers.get('Content-Type', '?')}): "
            "is annotation.url the address of Label Studio?"
        ) from None


def _describe(e: requests.RequestException) -> str:
    if isinstance(e, requests.Timeout):
        return "timed out"
    if isinstance(e, requests.ConnectionError):
        return "connection failed"
    return type(e).__name__


def _never_sent(e: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (refused, or no connection made)."""
    if isinstance(e, requests.ConnectTimeout):
        return True
    if isinstance(e, requests.ConnectionError):
        reason = getattr(e.args[0], "reason", None) if e.args else None
        return type(reason).__name__ == "NewConnectionError"
    return False


def _user_id(value: Any) -> int:
    # `completed_by` is an id in exports, a user object in some other endpoints.
    if isinstance(value, dict):
        return int(value.get("id", 0))
    return int(value or 0)
