"""Media uploads of load jobs: multipart bodies and resumable upload sessions (in memory).

`load_table_from_file(..., size=n)` with n < 5 MB sends one `multipart/related` POST (job JSON +
data); otherwise the client starts a resumable session (POST with the job JSON, answered with a
`Location`), then PUTs the data in chunks with `Content-Range: bytes a-b/total|*`; every chunk but
the last is answered 308 with the `Range` received so far.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from loopml.errors import InvalidArgument, NotFound

MAX_SESSIONS = 100
_RANGE_RE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)\Z")


def split_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """(job JSON, data) of a two-part `multipart/related` upload."""
    boundary = None
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not content_type.startswith("multipart/") or not boundary:
        raise InvalidArgument("Media uploads need a multipart/related body with a boundary.")
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        _head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            _head, sep, content = chunk.partition(b"\n\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content.rstrip(b"\n"))
    if len(parts) != 2:
        raise InvalidArgument("A multipart upload needs two parts: the job JSON and the data.")
    return job_json(parts[0]), parts[1]


def job_json(raw: bytes) -> dict[str, Any]:
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"Malformed job JSON in the upload: {exc}") from exc
    if not isinstance(meta, dict):
        raise InvalidArgument("The upload's job JSON must be an object.")
    return meta


def load_target(meta: dict[str, Any], project: str) -> tuple[dict[str, Any], tuple[str, str, str]]:
    """(configuration.load, destination (project, dataset, table)) of a load job's JSON."""
    load = (meta.get("configuration") or {}).get("load")
    if not isinstance(load, dict):
        raise InvalidArgument("The upload's job JSON needs configuration.load.")
    dest = load.get("destinationTable") or {}
    p, d, t = dest.get("projectId") or project, dest.get("datasetId"), dest.get("tableId")
    if not d or not t:
        raise InvalidArgument("configuration.load.destinationTable needs datasetId and tableId.")
    return load, (str(p), str(d), str(t))


@dataclass
class Session:
    project: str
    meta: dict[str, Any]
    data: bytearray = field(default_factory=bytearray)


class UploadSessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, project: str, meta: dict[str, Any]) -> str:
        load_target(meta, project)
        upload_id = uuid.uuid4().hex
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[upload_id] = Session(project, meta)
        return upload_id

    def put(self, upload_id: str, content_range: str | None, chunk: bytes) -> Session | int:
        """Append a chunk; the finished Session, or the number of bytes received so far."""
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None:
            raise NotFound(f"Not found: upload session {upload_id} (expired or unknown).")
        total: int | None = len(chunk)
        if content_range:
            m = _RANGE_RE.match(content_range.strip())
            if not m:
                raise InvalidArgument(f"Invalid Content-Range {content_range!r}.")
            start, _end, size = m.groups()
            if start is not None and int(start) != len(session.data):
                raise InvalidArgument(f"Chunk starts at {start}, expected {len(session.data)}.")
            total = None if size == "*" else int(size)
        session.data.extend(chunk)
        if total is None or len(session.data) < total:
            return len(session.data)
        with self._lock:
            self._sessions.pop(upload_id, None)
        return session
