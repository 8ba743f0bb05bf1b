"""The audit key: identifiers of erased images are kept only as keyed hashes (HMAC-SHA256) under
a secret from the environment, so the audit log and the tombstones name no image, session or
path, while whoever holds the key can still tell whether a given image was erased.

Decision: the key is required (no default, no key file written by the project). A lost or changed
key makes earlier tombstones unmatchable, so collect would take erased images back in: the error
says to keep it in the secret store the team already uses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from data.errors import AnonlabError

KEY_VARIABLE = "ANONLAB_AUDIT_KEY"
MIN_KEY_LENGTH = 32


@dataclass(frozen=True)
class AuditKey:
    """A secret that turns identifiers into keyed hashes; its value never appears in a repr."""

    secret: bytes

    def __repr__(self) -> str:
        return "AuditKey(<secret>)"

    def hash(self, kind: str, value: str) -> str:
        """The keyed hash of an identifier; `kind` (sha256, session, source_path) keeps equal
        strings of different kinds apart."""
        message = f"{kind}\0{value}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def audit_key(environ: dict[str, str] | None = None) -> AuditKey:
    """The key from ANONLAB_AUDIT_KEY; AnonlabError saying how to set one when it is missing or
    too short."""
    value = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
    if len(value) < MIN_KEY_LENGTH:
        state = "is not set" if not value else f"is shorter than {MIN_KEY_LENGTH} characters"
        raise AnonlabError(
            f"{KEY_VARIABLE} {state}. Erasure keeps identifiers only as keyed hashes under this "
            f"secret: set it to a random string of at least {MIN_KEY_LENGTH} characters "
            "(e.g. `export ANONLAB_AUDIT_KEY=$(python3 -c 'import secrets; "
            "print(secrets.token_hex(32))')`) kept in your secret store, and use the same key "
            "for every later command: with another key, erased images can no longer be "
            "recognised and collect would take them back in"
        )
    return AuditKey(value.encode())
