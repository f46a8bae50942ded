"""Routes: the Cloud Storage JSON API subset, so unmodified `google-cloud-storage` and `gcsfs` work.

Point them at the server with `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (or
`client_options={"api_endpoint": ...}` + `AnonymousCredentials`). Paths are parsed from the raw
request path, so `a%2Fb.txt` and `a/b.txt` both name the object `a/b.txt`. Uploads (media,
multipart, resumable) stream to disk with no size limit. See docs/storage.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from loopml.api.app import json_response, read_json
from loopml.api.storage_backend import Hasher, ObjectStore, validate_object_name
from loopml.api.storage_uploads import multipart_upload, resumable_put, resumable_start
from loopml.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from loopml.platform import Platform

log = logging.getLogger(__name__)
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _segments(request: Request, prefix: str) -> list[str]:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    if not path.startswith(prefix):
        raise NotFound(f"Not found: {request.url.path}")
    rest = path[len(prefix) :].strip("/")
    try:
        return [unquote(s, errors="strict") for s in rest.split("/")] if rest else []
    except UnicodeDecodeError:
        raise InvalidArgument("The request path is not valid percent-encoded UTF-8.") from None


def _params(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidArgument(f"Invalid {name} {value!r}: expected an integer.") from None
    if number < 1:
        raise InvalidArgument(f"Invalid {name} {value!r}: must be positive.")
    return number


def _split_object(parts: list[str]) -> tuple[str, str | None, str | None, str | None]:
    """`name…[/copyTo|rewriteTo/b/B2/o/name2…]` → (name, verb, dest bucket, dest name)."""
    for verb in ("copyTo", "rewriteTo"):
        for i in range(1, len(parts) - 3):
            if parts[i] == verb and parts[i + 1] == "b" and parts[i + 3] == "o":
                return "/".join(parts[:i]), verb, parts[i + 2], "/".join(parts[i + 4 :])
    if len(parts) >= 2 and parts[-1] == "compose":
        return "/".join(parts[:-1]), "compose", None, None
    return "/".join(parts), None, None, None


def _file_permissions(
    route: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A local file the server may not change (typically written under /gcs by a Docker job
    container running as another user, e.g. root) is a named 400, not an unexplained 500; the
    file's path goes to the server log only."""

    @functools.wraps(route)
    async def wrapper(request: Request) -> Response:
        try:
            return await route(request)
        except PermissionError as exc:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            raise FailedPrecondition(
                "The server has no permission to change this object's or bucket's files under its "
                "home (permission denied). Files written through /gcs by a Docker job container "
                'running as another user (e.g. root, LOOPML_DOCKER_USER="") belong to that user: '
                "change their owner or remove them as that user (see docs/images.md)."
            ) from None

    return wrapper


def install(app: FastAPI, platform: Platform) -> None:
    store = ObjectStore(platform.artifacts)
    app.state.object_store = store

    @app.api_route("/storage/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @_file_permissions
    async def storage_json(request: Request) -> Response:
        segs = _segments(request, "/storage/v1")
        params = _params(request)
        method = request.method
        if segs == ["b"]:
            if method == "GET":
                items = await store.run(store.list_buckets, params.get("prefix", ""))
                return json_response({"kind": "storage#buckets", "items": items})
            if method == "POST":
                body = await read_json(request)
                name = body.get("name") if isinstance(body, dict) else None
                if not isinstance(name, str) or not name:
                    raise InvalidArgument("A bucket name is required in the request body.")
                return json_response(await store.run(store.create_bucket, name, body))
        elif len(segs) == 2 and segs[0] == "b":
            if method == "GET":
                return json_response(await store.run(store.bucket_json, segs[1]))
            if method in ("PATCH", "PUT"):
                await read_json(request)
                return json_response(await store.run(store.bucket_json, segs[1]))
            if method == "DELETE":
                await store.run(store.delete_bucket, segs[1])
                return Response(status_code=204)
        elif len(segs) == 3 and segs[0] == "b" and segs[2] == "o" and method == "GET":
            return await store.run(_list, store, segs[1], params, _base_url(request))
        elif len(segs) >= 4 and segs[0] == "b" and segs[2] == "o":
            return await _object(request, store, segs[1], segs[3:], params)
        raise NotFound(f"Not found: {method} {request.url.path} is not part of the storage API subset.")

    @app.api_route("/upload/storage/v1/{rest:path}", methods=["POST", "PUT", "DELETE"])
    @_file_permissions
    async def storage_upload(request: Request) -> Response:
        segs = _segments(request, "/upload/storage/v1")
        if len(segs) != 3 or segs[0] != "b" or segs[2] != "o":
            raise NotFound(f"Not found: {request.url.path} (uploads go to /upload/storage/v1/b/BUCKET/o).")
        bucket = segs[1]
        await store.run(store.bucket_dir, bucket)
        params = _params(request)
        kind = params.get("uploadType", "")
        base = _base_url(request)
        if "upload_id" in params:
            return await resumable_put(request, store, bucket, params, base)
        if request.method != "POST":
            raise InvalidArgument("Uploads start with POST; PUT needs an upload_id.")
        if kind == "media":
            name = validate_object_name(params.get("name", ""))
            meta = await _stream_media(request, store, bucket, name, params)
            return json_response(store.object_json(bucket, name, base, meta))
        if kind == "multipart":
            return await multipart_upload(request, store, bucket, params, base)
        if kind == "resumable":
            return await resumable_start(request, store, bucket, params, base)
        raise InvalidArgument(f"Unsupported uploadType {kind!r}: use media, multipart or resumable.")

    @app.get("/download/storage/v1/{rest:path}")
    async def storage_download(request: Request) -> Response:
        segs = _segments(request, "/download/storage/v1")
        if len(segs) < 4 or segs[0] != "b" or segs[2] != "o":
            raise NotFound(f"Not found: {request.url.path}")
        name = validate_object_name("/".join(segs[3:]))
        return await store.run(_download, request, store, segs[1], name)

    @app.post("/batch/storage/v1")
    async def storage_batch(request: Request) -> Response:
        raise Unimplemented("Batch requests are not supported by loopml's storage API; send single requests.")


def _list(store: ObjectStore, bucket: str, params: dict[str, str], base: str) -> Response:
    names, prefixes, token = store.list_objects(
        bucket,
        prefix=params.get("prefix", ""),
        delimiter=params.get("delimiter", ""),
        page_token=params.get("pageToken", ""),
        max_results=_int_param(params, "maxResults", 1000),
        start_offset=params.get("startOffset", ""),
        end_offset=params.get("endOffset", ""),
        include_trailing_delimiter=params.get("includeTrailingDelimiter", "").lower() == "true",
        match_glob=params.get("matchGlob", ""),
    )
    items = []
    for name in names:
        try:
            items.append(store.object_json(bucket, name, base))
        except NotFound:  # deleted while listing
            continue
    body: dict[str, Any] = {"kind": "storage#objects", "items": items}
    if prefixes:
        body["prefixes"] = prefixes
    if token:
        body["nextPageToken"] = token
    return json_response(body)


async def _object(
    request: Request, store: ObjectStore, bucket: str, parts: list[str], params: dict[str, str]
) -> Response:
    name, verb, dst_bucket, dst_name = _split_object(parts)
    validate_object_name(name)
    base = _base_url(request)
    method = request.method
    if verb in ("copyTo", "rewriteTo") and method == "POST":
        assert dst_bucket is not None and dst_name is not None
        validate_object_name(dst_name)
        body = await read_json(request)
        meta = await store.run(
            store.copy, bucket, name, dst_bucket, dst_name, body if isinstance(body, dict) else {}
        )
        resource = store.object_json(dst_bucket, dst_name, base, meta)
        if verb == "copyTo":
            return json_response(resource)
        size = resource["size"]
        return json_response(
            {
                "kind": "storage#rewriteResponse",
                "totalBytesRewritten": size,
                "objectSize": size,
                "done": True,
                "resource": resource,
            }
        )
    if verb == "compose":
        raise Unimplemented("objects.compose is not supported by loopml's storage API.")
    if method == "GET":
        if params.get("alt") == "media":
            return await store.run(_download, request, store, bucket, name)
        meta = await store.run(_checked_stat, store, bucket, name, params)
        return json_response(store.object_json(bucket, name, base, meta))
    if method == "DELETE":
        await store.run(store.delete, bucket, name, params)
        return Response(status_code=204)
    if method in ("PATCH", "PUT"):
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidArgument("The request body must be a JSON object.")
        meta = await store.run(store.patch, bucket, name, body)
        return json_response(store.object_json(bucket, name, base, meta))
    raise NotFound(f"Not found: {method} on an object.")


def _checked_stat(store: ObjectStore, bucket: str, name: str, params: dict[str, str]) -> dict[str, Any]:
    meta = store.stat(bucket, name)
    if params.get("ifGenerationMatch") or params.get("ifGenerationNotMatch"):
        store.check_preconditions(bucket, name, params, meta)
    return meta


async def _stream_media(
    request: Request, store: ObjectStore, bucket: str, name: str, params: dict[str, str]
) -> dict[str, Any]:
    temp = store.new_temp()
    hasher = Hasher()
    try:
        with open(temp, "wb") as fh:
            async for chunk in request.stream():
                if chunk:
                    fh.write(chunk)
                    hasher.update(chunk)
        resource = {"contentType": params.get("contentType") or request.headers.get("content-type")}
        if params.get("contentEncoding"):
            resource["contentEncoding"] = params["contentEncoding"]
        return await store.run(store.commit, bucket, name, temp, resource, hasher, params)
    finally:
        temp.unlink(missing_ok=True)


def _download(request: Request, store: ObjectStore, bucket: str, name: str) -> Response:
    meta, path = store.local_copy(bucket, name)
    params = _params(request)
    gen = params.get("generation")
    if gen and gen != str(meta["generation"]):
        raise NotFound(f"No such object: {bucket}/{name} (generation {gen}).")
    size = int(meta["size"])
    headers = {
        "x-goog-generation": str(meta["generation"]),
        "x-goog-metageneration": str(meta.get("metageneration", 1)),
        "x-goog-stored-content-length": str(size),
        "x-goog-stored-content-encoding": meta.get("contentEncoding") or "identity",
        "x-goog-storage-class": "STANDARD",
        "accept-ranges": "bytes",
        "etag": f'"{meta["md5Hash"]}"',
    }
    start, end = 0, size - 1
    status = 200
    range_header = request.headers.get("range")
    if range_header and size > 0:
        m = _RANGE_RE.match(range_header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise InvalidArgument(f"Invalid Range header {range_header!r}.")
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:
            start = max(size - int(m.group(2)), 0)
        if (start >= size and size > 0) or start > end + 1:
            return Response(
                status_code=416,
                headers={"content-range": f"bytes */{size}"},
                content=json.dumps({"error": {"code": 416, "message": "Requested range not satisfiable."}}),
            )
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{size}"
    else:
        headers["x-goog-hash"] = f"crc32c={meta['crc32c']},md5={meta['md5Hash']}"
    length = max(end - start + 1, 0)
    headers["content-length"] = str(length)

    async def body() -> AsyncIterator[bytes]:
        remaining = length
        with open(path, "rb") as fh:
            fh.seek(start)
            while remaining > 0:
                chunk = fh.read(min(1 << 20, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    media_type = meta.get("contentType") or "application/octet-stream"
    if os.path.isdir(path):
        return Response(content=b"", status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)
