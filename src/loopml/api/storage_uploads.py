"""Multipart and resumable uploads of the Cloud Storage JSON API, streamed to disk.

Multipart (`multipart/related`: a JSON part, then the media part) is parsed while it streams:
the head is buffered until the media part starts, then bytes go to a temp file, holding back a
short tail that may be the closing boundary. Resumable uploads keep their state under
`gcs-meta/.uploads/<id>.json` and their bytes in `<id>.data`, so a session survives a restart.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from starlette.responses import Response

from loopml.api.app import json_response
from loopml.api.storage_backend import Hasher, ObjectStore, validate_object_name
from loopml.errors import InvalidArgument, NotFound

_MAX_HEAD = 4 * 1024 * 1024
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def _boundary(content_type: str) -> bytes:
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/") or not m:
        raise InvalidArgument("A multipart upload needs Content-Type: multipart/related; boundary=...")
    return m.group(1).encode()


def _skip_newline(buf: bytes, pos: int) -> int:
    if buf.startswith(b"\r\n", pos):
        return pos + 2
    if buf.startswith(b"\n", pos):
        return pos + 1
    return pos


def _headers_end(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(end of headers, start of body) after `pos`; an empty header block is allowed."""
    if buf.startswith(b"\r\n", pos):
        return pos, pos + 2
    if buf.startswith(b"\n", pos):
        return pos, pos + 1
    candidates = [(buf.find(sep, pos), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [(i, n) for i, n in candidates if i >= 0]
    if not found:
        return None
    i, n = min(found)
    return i, i + n


def _parse_head(buf: bytes, boundary: bytes) -> tuple[dict[str, Any], str, int] | None:
    """(metadata, media content type, offset of the media bytes) once the head is complete."""
    delim = b"--" + boundary
    i = buf.find(delim)
    if i < 0:
        return None
    pos = _skip_newline(buf, i + len(delim))
    h = _headers_end(buf, pos)
    if h is None:
        return None
    meta_start = h[1]
    k = buf.find(delim, meta_start)
    if k < 0:
        return None
    meta_raw = buf[meta_start:k].rstrip(b"\r\n")
    pos = _skip_newline(buf, k + len(delim))
    h2 = _headers_end(buf, pos)
    if h2 is None:
        return None
    media_headers = buf[pos : h2[0]].decode("latin-1")
    media_type = "application/octet-stream"
    for line in media_headers.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            media_type = value.strip()
    try:
        metadata = json.loads(meta_raw) if meta_raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"The metadata part of the multipart upload is not JSON: {exc}.") from exc
    if not isinstance(metadata, dict):
        raise InvalidArgument("The metadata part of the multipart upload must be a JSON object.")
    return metadata, media_type, h2[1]


async def multipart_upload(
    request: Request, store: ObjectStore, bucket: str, params: dict[str, str], base: str
) -> Response:
    boundary = _boundary(request.headers.get("content-type", ""))
    closing = b"--" + boundary + b"--"
    keep = len(closing) + 4
    temp = store.new_temp()
    hasher = Hasher()
    buf = b""
    head: tuple[dict[str, Any], str, int] | None = None
    try:
        with open(temp, "wb") as fh:
            async for chunk in request.stream():
                buf += chunk
                if head is None:
                    head = _parse_head(buf, boundary)
                    if head is None:
                        if len(buf) > _MAX_HEAD:
                            raise InvalidArgument("Malformed multipart upload: no media part found.")
                        continue
                    buf = buf[head[2] :]
                if len(buf) > keep:
                    out, buf = buf[:-keep], buf[-keep:]
                    fh.write(out)
                    hasher.update(out)
            if head is None:
                head = _parse_head(buf, boundary)
                if head is None:
                    raise InvalidArgument("Malformed multipart upload: no media part found.")
                buf = buf[head[2] :]
            end = buf.rfind(closing)
            if end < 0:
                raise InvalidArgument("Malformed multipart upload: the closing boundary is missing.")
            tail = buf[:end]
            if tail.endswith(b"\r\n"):
                tail = tail[:-2]
            elif tail.endswith(b"\n"):
                tail = tail[:-1]
            fh.write(tail)
            hasher.update(tail)
        metadata, media_type, _ = head
        name = validate_object_name(str(metadata.get("name") or params.get("name") or ""))
        metadata.setdefault("contentType", media_type)
        meta = await store.run(store.commit, bucket, name, temp, metadata, hasher, params)
    finally:
        temp.unlink(missing_ok=True)
    return json_response(store.object_json(bucket, name, base, meta))


# -- resumable ------------------------------------------------------------------------------
def _session_paths(store: ObjectStore, upload_id: str) -> tuple[Path, Path]:
    if not _ID_RE.match(upload_id):
        raise InvalidArgument(f"Invalid upload_id {upload_id!r}.")
    return store.uploads_dir / f"{upload_id}.json", store.uploads_dir / f"{upload_id}.data"


async def resumable_start(
    request: Request, store: ObjectStore, bucket: str, params: dict[str, str], base: str
) -> Response:
    body = await request.body()
    try:
        metadata = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"The resumable upload metadata is not JSON: {exc}.") from exc
    if not isinstance(metadata, dict):
        raise InvalidArgument("The resumable upload metadata must be a JSON object.")
    name = validate_object_name(str(metadata.get("name") or params.get("name") or ""))
    await store.run(store.object_path, bucket, name)
    await store.run(store.check_preconditions, bucket, name, params)
    metadata["name"] = name
    if not metadata.get("contentType") and request.headers.get("x-upload-content-type"):
        metadata["contentType"] = request.headers["x-upload-content-type"]
    upload_id = secrets.token_urlsafe(24)
    state_path, data_path = _session_paths(store, upload_id)
    data_path.write_bytes(b"")
    preconditions = {k: v for k, v in params.items() if k.startswith("if")}
    state_path.write_text(json.dumps({"bucket": bucket, "resource": metadata, "params": preconditions}))
    location = f"{base}/upload/storage/v1/b/{quote(bucket)}/o?uploadType=resumable&upload_id={upload_id}"
    return Response(status_code=200, headers={"location": location, "x-guploader-uploadid": upload_id})


async def resumable_put(
    request: Request, store: ObjectStore, bucket: str, params: dict[str, str], base: str
) -> Response:
    upload_id = params["upload_id"]
    state_path, data_path = _session_paths(store, upload_id)
    if not state_path.is_file():
        raise NotFound(f"No resumable upload session {upload_id!r} (finished, cancelled or unknown).")
    state = json.loads(state_path.read_text())
    if state["bucket"] != bucket:
        raise InvalidArgument("The upload session belongs to another bucket.")
    if request.method == "DELETE":
        state_path.unlink(missing_ok=True)
        data_path.unlink(missing_ok=True)
        return Response(status_code=499)
    current = data_path.stat().st_size
    content_range = request.headers.get("content-range", "").strip()
    total: int | None = None
    start: int | None = None
    if content_range:
        m = _CONTENT_RANGE_RE.match(content_range)
        if not m:
            raise InvalidArgument(f"Invalid Content-Range {content_range!r}.")
        start = int(m.group(1)) if m.group(1) is not None else None
        total = int(m.group(3)) if m.group(3) != "*" else None
    if start is not None and start > current:
        return _incomplete(current)
    received = 0
    with open(data_path, "r+b") as fh:
        if start is not None:
            fh.truncate(start)
            fh.seek(start)
        else:
            fh.seek(current)
        async for chunk in request.stream():
            if chunk:
                fh.write(chunk)
                received += len(chunk)
    size = data_path.stat().st_size
    if not content_range:
        total = size  # a single PUT carries the whole object
    if total is None or size < total:
        return _incomplete(size)
    if size > total:
        raise InvalidArgument(f"Received {size} bytes, more than the declared total of {total}.")
    temp = store.new_temp()
    os.replace(data_path, temp)
    state_path.unlink(missing_ok=True)
    meta = await store.run(
        store.commit,
        bucket,
        state["resource"]["name"],
        temp,
        state["resource"],
        None,
        state.get("params") or {},
    )
    return json_response(store.object_json(bucket, state["resource"]["name"], base, meta))


def _incomplete(size: int) -> Response:
    headers = {"range": f"bytes=0-{size - 1}"} if size > 0 else {}
    return Response(status_code=308, headers=headers)
