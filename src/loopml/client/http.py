"""HTTP plumbing of the Python client: one keep-alive httpx.Client, errors, long-running operations."""

from __future__ import annotations

import time
from typing import Any

import httpx

from loopml import errors

_GRPC_TO_ERROR: dict[int, type[errors.LoopmlError]] = {
    3: errors.InvalidArgument,
    5: errors.NotFound,
    6: errors.AlreadyExists,
    7: errors.PermissionDenied,
    8: errors.ResourceExhausted,
    9: errors.FailedPrecondition,
    10: errors.Aborted,
    12: errors.Unimplemented,
    14: errors.Unavailable,
}


def operation_error(error: dict[str, Any]) -> errors.LoopmlError:
    """The LoopmlError for a failed operation's `error` (google.rpc.Status)."""
    cls = _GRPC_TO_ERROR.get(int(error.get("code", 13)), errors.LoopmlError)
    return cls(str(error.get("message", "operation failed")))


class Transport:
    """Sends requests to a loopml server and turns failures into loopml errors."""

    def __init__(self, url: str, *, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=60.0),
            headers={"user-agent": "loopml-client"},
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=clean or None, content=content, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise errors.ServerUnreachable(
                f"no server reachable at {self.url} — start one with `loopml server` "
                "(or set LOOPML_URL to where it runs)."
            ) from exc
        except httpx.TimeoutException as exc:
            raise errors.Unavailable(f"{method} {path} timed out waiting for {self.url}.") from exc
        except httpx.UnsupportedProtocol as exc:  # e.g. LOOPML_URL=127.0.0.1:8080
            raise errors.ServerUnreachable(
                f"the server URL {self.url!r} needs http:// or https:// (e.g. LOOPML_URL=http://127.0.0.1:8080)."
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.ServerUnreachable(f"request to {self.url} failed: {str(exc).rstrip('.')}.") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text[:500] or f"HTTP {response.status_code}"}}
            raise errors.from_json(response.status_code, body)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
            return {}
        return response.json()

    def operation(self, method: str, path: str, *, timeout: float = 600.0, **kwargs: Any) -> dict[str, Any]:
        """Call a method returning an Operation, wait for it, and return its `response`."""
        op = self.json(method, path, **kwargs)
        deadline = time.monotonic() + timeout
        delay = 0.2
        while not op.get("done"):
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"Operation {op.get('name')} did not finish within {timeout:.0f} s.")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
            op = self.json("GET", f"/v1/{op['name']}")
        if op.get("error"):
            raise operation_error(op["error"])
        response: dict[str, Any] = op.get("response") or {}
        return response
