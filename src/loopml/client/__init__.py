"""Python client over loopml's REST API (httpx): the same nouns and errors as the server."""

from __future__ import annotations


class Client:  # replaced by the registry/endpoint work
    def __init__(self, url: str | None = None) -> None:
        self.url = url
