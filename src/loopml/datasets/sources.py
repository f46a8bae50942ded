"""The data behind a tabular dataset: CSV objects in the artifact store, or a warehouse table.

`inputConfig.gcsSource.uri` is a list of `gs://` objects (a `*` in the last path segment is a
wildcard). As in Vertex, the first line of the lexicographically first file is the header; the
other files either repeat that exact header or have none. `inputConfig.bigquerySource.uri` is
`bq://project.dataset.table` in the warehouse. Every problem is an InvalidArgument naming the
URI, so a client learns which source is wrong.
"""

from __future__ import annotations

import fnmatch
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from loopml.artifacts import ArtifactStore
from loopml.errors import InvalidArgument, NotFound

BQ_PREFIX = "bq://"
_MAX_HEADER_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """A dataset's source: `kind` "gcs" with object URIs, or "bigquery" with one table."""

    kind: str
    uris: tuple[str, ...]

    @property
    def table(self) -> tuple[str, str, str]:
        return parse_bq_table(self.uris[0], "inputConfig.bigquerySource.uri")


def parse_bq_table(uri: Any, where: str) -> tuple[str, str, str]:
    """(project, dataset, table) of `bq://p.d.t`."""
    if not isinstance(uri, str) or not uri.startswith(BQ_PREFIX):
        raise InvalidArgument(f"{where} must be 'bq://project.dataset.table', got {uri!r}.")
    parts = uri[len(BQ_PREFIX) :].split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidArgument(f"{where} must be 'bq://project.dataset.table', got {uri!r}.")
    return parts[0], parts[1], parts[2]


def parse_source(metadata: Any) -> Source:
    """The source named by a tabular Dataset's `metadata` (shape only; see `check_exists`)."""
    if not isinstance(metadata, dict):
        raise InvalidArgument(
            "Dataset.metadata must be an object {inputConfig: {gcsSource: {uri: [...]}}} or "
            "{inputConfig: {bigquerySource: {uri: 'bq://p.d.t'}}}."
        )
    config = metadata.get("inputConfig", metadata.get("input_config"))
    if not isinstance(config, dict):
        raise InvalidArgument(
            "Dataset.metadata.inputConfig is required for a tabular dataset: give gcsSource.uri "
            "(CSV files) or bigquerySource.uri (a table)."
        )
    gcs = config.get("gcsSource", config.get("gcs_source"))
    bq = config.get("bigquerySource", config.get("bigquery_source"))
    if bool(gcs) == bool(bq):
        raise InvalidArgument(
            "Dataset.metadata.inputConfig needs exactly one of gcsSource and bigquerySource."
        )
    if gcs:
        uris = gcs.get("uri", gcs.get("uris")) if isinstance(gcs, dict) else None
        if isinstance(uris, str):
            uris = [uris]
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise InvalidArgument("inputConfig.gcsSource.uri must be a non-empty list of gs:// URIs.")
        for uri in uris:
            if not uri.startswith("gs://") or len(uri) <= 5:
                raise InvalidArgument(f"inputConfig.gcsSource.uri {uri!r} is not a gs:// URI.")
        return Source("gcs", tuple(uris))
    uri = bq.get("uri") if isinstance(bq, dict) else None
    parse_bq_table(uri, "inputConfig.bigquerySource.uri")
    return Source("bigquery", (str(uri),))


def expand_gcs(store: ArtifactStore, uris: tuple[str, ...]) -> list[str]:
    """Every object the URIs name, sorted; a URI that names nothing is an InvalidArgument."""
    found: set[str] = set()
    for uri in uris:
        head, _, last = uri.rpartition("/")
        if "*" in head or "?" in uri or "[" in uri:
            raise InvalidArgument(
                f"inputConfig.gcsSource.uri {uri!r}: only a '*' in the last path segment is supported."
            )
        if "*" in last:
            prefix = f"{head}/{last.split('*', 1)[0]}"
            matches = [
                u
                for u in store.list(prefix)
                if u.rpartition("/")[0] == head and fnmatch.fnmatchcase(u.rpartition("/")[2], last)
            ]
            if not matches:
                raise InvalidArgument(f"inputConfig.gcsSource.uri {uri!r} matches no object.")
            found.update(matches)
            continue
        path = store.fetch(uri)  # from the object store, when there is one
        if not path.is_file():
            raise InvalidArgument(f"inputConfig.gcsSource.uri {uri!r} does not exist.")
        found.add(uri)
    return sorted(found)


def _header_line(data: bytes) -> bytes:
    return data.split(b"\n", 1)[0].rstrip(b"\r").strip()


def _read_csv(data: bytes, uri: str, names: list[str] | None) -> pa.Table:
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 22)
    try:
        return pacsv.read_csv(io.BytesIO(data), read_options=read)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidArgument(
            f"inputConfig.gcsSource.uri {uri!r} is not a readable CSV file: {exc}"
        ) from None


class SourceReader:
    """Checks and reads dataset sources against the artifact store and the warehouse."""

    def __init__(self, store: ArtifactStore, warehouse: Callable[[], Any]) -> None:
        self.store = store
        self._warehouse = warehouse

    def warehouse(self) -> Any:
        wh = self._warehouse()
        if wh is None:
            raise InvalidArgument("This server has no warehouse, so bigquerySource cannot be used.")
        return wh

    def check_exists(self, source: Source) -> list[str]:
        """The source's column names; InvalidArgument naming the URI if it does not exist."""
        if source.kind == "gcs":
            files = expand_gcs(self.store, source.uris)
            path = self.store.fetch(files[0])
            with open(path, "rb") as f:
                first = _header_line(f.read(_MAX_HEADER_BYTES))
            if not first:
                raise InvalidArgument(f"inputConfig.gcsSource.uri {files[0]!r} is empty (no CSV header).")
            return list(_read_csv(first + b"\n", files[0], None).column_names)
        project, dataset, table = source.table
        try:
            info = self.warehouse().get_table(project, dataset, table, with_rows=False)
        except NotFound:
            raise InvalidArgument(
                f"inputConfig.bigquerySource.uri {source.uris[0]!r} does not exist in the warehouse."
            ) from None
        return [str(f["name"]) for f in info["schema"] or []]

    def read(self, source: Source) -> pa.Table:
        """All rows of the source as one Arrow table (CSV files concatenated in name order)."""
        if source.kind == "bigquery":
            project, dataset, table = source.table
            try:
                return self.warehouse().read_table_arrow(project, dataset, table)
            except NotFound:
                raise InvalidArgument(
                    f"inputConfig.bigquerySource.uri {source.uris[0]!r} does not exist in the warehouse."
                ) from None
        files = expand_gcs(self.store, source.uris)
        tables: list[pa.Table] = []
        header: bytes | None = None
        names: list[str] = []
        for uri in files:
            data = self.store.read_bytes(uri)
            if header is None:
                header = _header_line(data)
                if not header:
                    raise InvalidArgument(f"inputConfig.gcsSource.uri {uri!r} is empty (no CSV header).")
                table = _read_csv(data, uri, None)
                names = list(table.column_names)
            elif _header_line(data) == header:
                table = _read_csv(data, uri, None)
            elif not data.strip():
                continue
            else:
                table = _read_csv(data, uri, names)
            tables.append(table)
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise InvalidArgument(
                f"The CSV files of inputConfig.gcsSource.uri do not share their columns and types: {exc}"
            ) from None
