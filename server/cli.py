"""The `ecad` console script: the library's commands plus `serve`."""

from ecad.cli import app

__all__ = ["app"]
