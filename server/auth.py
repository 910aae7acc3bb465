"""Bearer API keys: where they come from and the check every protected route makes."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from starlette.requests import Request

from server import errors
from server.config import AuthConfig


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys; none means the API is open (start-up logs a warning)."""

    keys: frozenset[str]

    @classmethod
    def load(cls, auth: AuthConfig) -> ApiKeys:
        """Comma-separated in the environment variable, and/or one per line in the file (`#` comments),
        read once at start-up."""
        keys = {key.strip() for key in os.environ.get(auth.api_keys_env, "").split(",")}
        if auth.api_keys_file is not None:
            lines = auth.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys |= {line.strip() for line in lines if not line.lstrip().startswith("#")}
        keys.discard("")
        return cls(frozenset(keys))

    @property
    def open(self) -> bool:
        return not self.keys

    def check(self, request: Request) -> None:
        """Raise 401 unless the request carries `Authorization: Bearer <a key>` (or the API is open)."""
        if self.open:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, key) for key in self.keys):
            raise errors.unauthorized()
