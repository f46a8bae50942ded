"""BigQuery ML on the warehouse: CREATE/DROP/EXPORT/ALTER MODEL statements and the ML.* table functions.

The service plugs into the warehouse through its two extension hooks (`install()`), keeps
models in the catalog (`catalog.py`) and registers them in the Vertex Model Registry on request.
CREATE MODEL is all-or-nothing: options are checked before any data is read, the model is trained
in memory, staged, swapped in with one rename and only then registered; a registry failure puts
the previous model back, so a failed statement leaves no model and no registry version.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from loopml.artifacts import ArtifactStore
from loopml.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidQuery,
    LoopmlError,
    NotFound,
    PreconditionFailed,
)
from loopml.sqlml import functions, trainer
from loopml.sqlml import options as opts
from loopml.sqlml.catalog import Catalog, Entry
from loopml.sqlml.metadata import ModelUpdate, from_alter, from_patch
from loopml.sqlml.model import SqlModel
from loopml.sqlml.registration import Registrar, vertex_location
from loopml.sqlml.resources import etag, model_resource
from loopml.sqlml.statements import (
    AlterModel,
    CreateModel,
    ModelPath,
    parse_alter_model,
    parse_create_model,
    parse_drop_model,
    parse_export_model,
    resolve_path,
    statement_kind,
)
from loopml.warehouse.types import QueryContext, QueryResult, TableFunctionArgs

log = logging.getLogger(__name__)

FUNCTIONS = (
    "ML.VALIDATE_DATA_SKEW",
    "ML.PREDICT",
    "ML.EVALUATE",
    "ML.CENTROIDS",
    "ML.DETECT_ANOMALIES",
    "ML.TRAINING_INFO",
    "ML.FEATURE_INFO",
)
_NO_INPUT = ("ML.CENTROIDS", "ML.TRAINING_INFO", "ML.FEATURE_INFO")


def _target(path: ModelPath) -> tuple[str, str, str]:
    """The job's `ddlTargetTable` (BigQuery reports a model there; GCPC's create-model op reads it)."""
    return (path.project, path.dataset, path.model)


class SqlMLService:
    def __init__(self, warehouse: Any, artifacts: ArtifactStore, registry: Any | None = None) -> None:
        self.warehouse = warehouse
        self.artifacts = artifacts
        self.catalog = Catalog(artifacts.root)
        self.registrar = Registrar(registry) if registry is not None else None

    def install(self) -> None:
        """Register the statement handler and the ML.* table functions on the warehouse."""
        self.warehouse.register_statement_handler(self.handle_statement)
        for name in FUNCTIONS:
            self.warehouse.register_table_function(name, self._table_function(name))

    # -- statements ------------------------------------------------------------------------
    def handle_statement(
        self, sql: str, parsed: exp.Expression | None, ctx: QueryContext
    ) -> QueryResult | None:
        kind = statement_kind(sql)
        if kind is None:
            return None
        if kind == "CREATE_MODEL":
            return self.create_model(parse_create_model(sql, ctx.project, ctx.default_dataset), ctx)
        if kind == "ALTER_MODEL":
            return self.alter_model(parse_alter_model(sql, ctx.project, ctx.default_dataset))
        if kind == "DROP_MODEL":
            stmt = parse_drop_model(sql, ctx.project, ctx.default_dataset)
            return self.drop_model(stmt.path, if_exists=stmt.if_exists)
        stmt_e = parse_export_model(sql, ctx.project, ctx.default_dataset)
        return self.export_model(stmt_e.path, stmt_e.options)

    def create_model(self, stmt: CreateModel, ctx: QueryContext) -> QueryResult:
        path = stmt.path
        o = opts.validate(stmt.options, path.model)
        dataset = self.warehouse.get_dataset(path.project, path.dataset)  # 404 for a missing dataset
        if self.warehouse.table_exists(path.project, path.dataset, path.model):
            raise AlreadyExists(
                f"Already Exists: Table {path.project}:{path.dataset}.{path.model}; a model cannot share a table's name."
            )
        existing = self.catalog.find(path)
        if existing is not None and not stmt.replace:
            if stmt.if_not_exists:
                return QueryResult.empty("CREATE_MODEL", ddl_operation="SKIP", destination=_target(path))
            raise AlreadyExists(f"Already Exists: Model {path.project}:{path.dataset}.{path.model}")
        if o["MODEL_REGISTRY"] and self.registrar is None:
            raise InvalidQuery(
                "MODEL_REGISTRY = 'VERTEX_AI' needs the model registry, which is not configured."
            )
        warm = None
        if o.get("WARM_START"):
            if existing is None:
                raise InvalidQuery(f"WARM_START needs an existing model {path.full} to start from.")
            warm = self.catalog.load(existing)
        result = ctx.query(stmt.query)
        if result.statement_type not in ("SELECT", "SCRIPT"):
            raise InvalidQuery("The AS clause of CREATE MODEL must be a query (SELECT ...).")
        model = trainer.train_model(result.table, o, warm=warm)
        tables = self._training_tables(stmt.query, ctx)
        model.info.update(
            {
                "bqml_model": path.full,
                "query": stmt.query,
                "project": ctx.project,
                "default_dataset": ctx.default_dataset,
                "created_ms": int(time.time() * 1000),
                "training_tables": tables,
            }
        )
        record = {
            "statement": stmt.sql,
            "created_ms": model.info["created_ms"],
            "model_type": o["MODEL_TYPE"],
        }
        with self.catalog.lock:
            current = self.catalog.find(path)
            if current is not None and not stmt.replace:
                raise AlreadyExists(f"Already Exists: Model {path.project}:{path.dataset}.{path.model}")
            staging = self.catalog.stage(path, model, record)
            parked = self.catalog.swap_in(path, staging)
            try:
                entry = self.catalog.get(path)
                if o["MODEL_REGISTRY"]:
                    assert self.registrar is not None
                    link = self.registrar.register(
                        path.project,
                        vertex_location(dataset.get("location")),
                        o["VERTEX_AI_MODEL_ID"],
                        o["VERTEX_AI_MODEL_VERSION_ALIASES"],
                        self.artifacts.uri_for(entry.artifact_dir),
                        {
                            "kind": "sql",
                            "statement": stmt.sql,
                            "trainingTables": tables,
                            "bqmlModel": path.full,
                        },
                        o.get("DESCRIPTION"),
                    )
                    try:
                        self.catalog.set_registry(entry, link)
                    except BaseException:
                        self.registrar.remove_quietly(link)
                        raise
            except BaseException:
                self.catalog.rollback(path, parked)
                raise
            if parked is not None:
                self.catalog.discard(parked)
        old_link = current.registry if current is not None else None
        if old_link and self.registrar is not None and old_link != entry.registry:
            self.registrar.remove_quietly(old_link)
        log.info("created model %s (%s)", path.full, o["MODEL_TYPE"])
        return QueryResult.empty(
            "CREATE_MODEL",
            ddl_operation="REPLACE" if current is not None else "CREATE",
            destination=_target(path),
        )

    def _training_tables(self, query: str, ctx: QueryContext) -> list[str]:
        try:
            tree = sqlglot.parse_one(query, read="bigquery")
        except sqlglot.errors.ParseError:
            return []
        ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
        out: list[str] = []
        for t in tree.find_all(exp.Table):
            parts = [
                p.name for p in (t.args.get("catalog"), t.args.get("db"), t.this) if p is not None and p.name
            ]
            if not parts or (len(parts) == 1 and parts[0].lower() in ctes):
                continue
            try:
                name = ".".join(ctx.resolve(parts, "table"))
            except LoopmlError:
                continue
            if name not in out:
                out.append(name)
        return out

    def drop_model(self, path: ModelPath, *, if_exists: bool = False) -> QueryResult:
        with self.catalog.lock:
            entry = self.catalog.find(path)
            if entry is None:
                if if_exists:
                    return QueryResult.empty("DROP_MODEL", ddl_operation="SKIP", destination=_target(path))
                raise NotFound(f"Not found: Model {path.project}:{path.dataset}.{path.model}")
            if entry.registry and self.registrar is not None:
                self.registrar.remove(entry.registry)  # refused (400) while deployed; nothing changes
            self.catalog.delete(entry)
        log.info("dropped model %s", path.full)
        return QueryResult.empty("DROP_MODEL", ddl_operation="DROP", destination=_target(path))

    def alter_model(self, stmt: AlterModel) -> QueryResult:
        """ALTER MODEL … SET OPTIONS(...): metadata, and registering an unregistered model."""
        update = from_alter(stmt.options)
        if self.catalog.find(stmt.path) is None and stmt.if_exists:
            return QueryResult.empty("ALTER_MODEL", ddl_operation="SKIP", destination=_target(stmt.path))
        self.update_model(stmt.path, update, error=InvalidQuery)
        log.info("altered model %s", stmt.path.full)
        return QueryResult.empty("ALTER_MODEL", destination=_target(stmt.path))

    def update_model(
        self,
        path: ModelPath,
        up: ModelUpdate,
        *,
        if_match: str | None = None,
        error: type[InvalidArgument] = InvalidArgument,
    ) -> Entry:
        """Apply a checked metadata update; registers the model first when asked to.

        Everything is checked before anything changes. Then, in order: a new registration, the
        catalog record, the registry version's description/labels, its new aliases. When a step
        fails the earlier ones are undone (the registration removed, the record and the registry
        version's description and labels put back), so a failed update changes nothing. An update
        that changes nothing (same values, an id the model is already registered under, aliases it
        already holds) leaves the record, so the etag and lastModifiedTime stay.
        """
        with self.catalog.lock:
            entry = self.catalog.get(path)
            if if_match is not None and if_match.strip() not in ("*", etag(entry), f'"{etag(entry)}"'):
                raise PreconditionFailed(
                    f"Model {path.project}:{path.dataset}.{path.model} has changed (etag {etag(entry)}); "
                    "get it again and retry the update."
                )
            record = entry.record
            changes = self._metadata_changes(entry, up)
            labels: dict[str, str] = changes.get("labels", dict(record.get("labels") or {}))
            current = entry.registry
            registering = up.registers and current is None
            new_aliases: list[str] = []
            if registering:
                self._check_registration(entry, up, error)
            elif up.registers and current is not None:
                if up.vertex_model_id is not None and up.vertex_model_id != current["model_id"]:
                    raise error(
                        f"Model {path.full} is already registered as Vertex AI model {current['model_id']}; "
                        "a BigQuery ML model is registered under one model id only."
                    )
                if up.aliases and self.registrar is not None:
                    held = self.registrar.aliases(current)
                    new_aliases = [a for a in up.aliases if a not in held]
            if not changes and not new_aliases and not registering:
                return entry  # nothing to change: the etag and lastModifiedTime stay
            old_record = dict(record)
            changes["revision"] = int(record.get("revision") or 0) + 1
            changes["modified_ms"] = int(time.time() * 1000)
            link = self._register_existing(entry, up, labels, changes) if registering else None
            if link is not None:
                changes["registry"] = link
            try:
                self.catalog.update_record(entry, changes)
            except BaseException:
                if link is not None and self.registrar is not None:
                    self.registrar.remove_quietly(link)
                raise
            if current is not None and self.registrar is not None:
                try:
                    self._update_registry_version(current, changes, labels, new_aliases)
                except BaseException:
                    self.catalog.write_record(entry, old_record)
                    raise
        return entry

    def _metadata_changes(self, entry: Entry, up: ModelUpdate) -> dict[str, Any]:
        """The record fields the update really changes (a value equal to the current one is left out)."""
        record = entry.record
        changes: dict[str, Any] = {}
        if "description" in up.given:
            current = (
                record["description"]
                if "description" in record
                else self.catalog.load(entry).options.get("DESCRIPTION")
            )
            if (up.description or "") != (current or ""):  # both shown as no description
                changes["description"] = up.description
        if "friendlyName" in up.given and (up.friendly_name or "") != (record.get("friendly_name") or ""):
            changes["friendly_name"] = up.friendly_name
        if "expirationTime" in up.given and up.expiration_ms != record.get("expiration_ms"):
            changes["expiration_ms"] = up.expiration_ms
        if "labels" in up.given:
            before: dict[str, str] = dict(record.get("labels") or {})
            labels = {} if up.replace_labels else dict(before)
            for key, value in up.labels.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            if labels != before:
                changes["labels"] = labels
        return changes

    def _check_registration(self, entry: Entry, up: ModelUpdate, error: type[InvalidArgument]) -> None:
        """The checks of registering an unregistered model, made before anything changes."""
        if up.vertex_model_id is None:
            raise error(
                f"Model {entry.path.full} is not registered: set VERTEX_AI_MODEL_ID to register it, "
                "together with VERTEX_AI_MODEL_VERSION_ALIASES."
            )
        if self.registrar is None:
            raise error("Registering in Vertex AI needs the model registry, which is not configured.")
        self.warehouse.get_dataset(entry.path.project, entry.path.dataset)

    def _update_registry_version(
        self, link: dict[str, Any], changes: dict[str, Any], labels: dict[str, str], aliases: list[str]
    ) -> None:
        """Keep a registered model's registry version in step: description, labels, new aliases.

        If adding the aliases fails, the description and labels are put back before re-raising.
        """
        assert self.registrar is not None
        undo = None
        if changes.keys() & {"description", "labels"}:
            undo = self.registrar.describe(
                link,
                (changes["description"] or "") if "description" in changes else None,
                labels if "labels" in changes else None,
            )
        try:
            self.registrar.add_aliases(link, aliases)
        except BaseException:
            if undo:
                self.registrar.write_fields(link, undo)
            raise

    def _register_existing(
        self, entry: Entry, up: ModelUpdate, labels: dict[str, str], changes: dict[str, Any]
    ) -> dict[str, Any]:
        """Register an unregistered model (VERTEX_AI_MODEL_ID, checked by _check_registration)."""
        assert self.registrar is not None and up.vertex_model_id is not None
        path = entry.path
        dataset = self.warehouse.get_dataset(path.project, path.dataset)
        model = self.catalog.load(entry)
        description = (
            changes["description"]
            if "description" in changes
            else entry.record.get("description", model.options.get("DESCRIPTION"))
        )
        return self.registrar.register(
            path.project,
            vertex_location(dataset.get("location")),
            up.vertex_model_id,
            up.aliases or [],
            self.artifacts.uri_for(entry.artifact_dir),
            {
                "kind": "sql",
                "statement": entry.record.get("statement", ""),
                "trainingTables": list(model.info.get("training_tables") or []),
                "bqmlModel": path.full,
            },
            description,
            labels,
        )

    def export_model(self, path: ModelPath, options: dict[str, Any]) -> QueryResult:
        unknown = sorted(set(options) - {"URI"})
        if unknown:
            raise InvalidQuery(f"Unknown option {unknown[0]} in EXPORT MODEL; only URI is supported.")
        uri = options.get("URI")
        if not isinstance(uri, str) or not uri:
            raise InvalidQuery("EXPORT MODEL needs OPTIONS(URI = 'gs://bucket/path').")
        entry = self.catalog.get(path)
        dest = self.artifacts.resolve(uri.rstrip("/"))
        if dest.is_file():
            raise InvalidQuery(f"EXPORT MODEL destination {uri} is a file; give a directory URI.")
        base = uri.rstrip("/")
        for f in sorted(entry.artifact_dir.rglob("*")):
            if f.is_file():
                self.artifacts.write_bytes(
                    f"{base}/{f.relative_to(entry.artifact_dir).as_posix()}", f.read_bytes()
                )
        log.info("exported model %s to %s", path.full, uri)
        return QueryResult.empty("EXPORT_MODEL")

    # -- Python API and BigQuery `models` resources -----------------------------------------
    def get_model(self, path: ModelPath) -> tuple[Entry, SqlModel]:
        entry = self.catalog.get(path)
        return entry, self.catalog.load(entry)

    def list_model_resources(self, project: str, dataset: str) -> list[dict[str, Any]]:
        """`GET /bigquery/v2/projects/p/datasets/d/models` items (404 for a missing dataset)."""
        location = self.warehouse.get_dataset(project, dataset).get("location") or "US"
        resolve_path([project, dataset, "m"], project, None)  # validates the names
        return [
            model_resource(e, self.catalog.load(e), location) for e in self.catalog.list(project, dataset)
        ]

    def get_model_resource(self, project: str, dataset: str, model: str) -> dict[str, Any]:
        """`GET /bigquery/v2/projects/p/datasets/d/models/m` (404 when there is no such model)."""
        path = resolve_path([project, dataset, model], project, None)
        location = self.warehouse.get_dataset(project, dataset).get("location") or "US"
        entry, loaded = self.get_model(path)
        return model_resource(entry, loaded, location)

    def patch_model_resource(
        self, project: str, dataset: str, model: str, body: Any, if_match: str | None = None
    ) -> dict[str, Any]:
        """`PATCH /bigquery/v2/projects/p/datasets/d/models/m` (description, labels, friendlyName,
        expirationTime, trainingRuns[].vertexAiModelId); 412 when If-Match names an older etag."""
        path = resolve_path([project, dataset, model], project, None)
        location = self.warehouse.get_dataset(project, dataset).get("location") or "US"
        update = from_patch(body, path)
        entry = self.update_model(path, update, if_match=if_match)
        return model_resource(entry, self.catalog.load(entry), location)

    def delete_model(self, project: str, dataset: str, model: str) -> None:
        """`DELETE /bigquery/v2/projects/p/datasets/d/models/m`: DROP MODEL (404 when missing)."""
        self.drop_model(resolve_path([project, dataset, model], project, None))

    # -- table functions -------------------------------------------------------------------
    def _table_function(self, name: str) -> Any:
        def run(args: TableFunctionArgs, ctx: QueryContext) -> pa.Table:
            return self.call(name, args, ctx)

        run.__name__ = name.replace(".", "_").lower()
        return run

    def call(self, name: str, args: TableFunctionArgs, ctx: QueryContext) -> pa.Table:
        for raw in args.args:
            head = raw.lstrip()[:7].upper()
            if not (head.startswith(("MODEL", "TABLE", "STRUCT", "("))):
                raise InvalidQuery(
                    f"Unexpected argument {raw[:60]!r} to {name}: expected TABLE t, (SELECT ...) or STRUCT(...)."
                )
        if args.model is None:
            raise InvalidQuery(f"{name} needs a MODEL argument: {name}(MODEL dataset.model, ...).")
        _, model = self.get_model(ModelPath(*args.model))
        settings = dict(args.options)
        if name in _NO_INPUT:
            if args.query is not None:
                raise InvalidQuery(f"{name} takes no input data, only MODEL and an optional STRUCT.")
            if name == "ML.CENTROIDS":
                return functions.centroids(model, settings)
            if name == "ML.TRAINING_INFO":
                return functions.training_info(model, settings)
            return functions.feature_info(model, settings)
        table = ctx.query(args.query).table if args.query is not None else None
        if name == "ML.PREDICT":
            return functions.predict(model, functions.require_input(name, table), settings)
        if name == "ML.EVALUATE":
            return functions.evaluate(model, table, settings)
        if name == "ML.VALIDATE_DATA_SKEW":
            return functions.validate_data_skew(model, functions.require_input(name, table), settings)
        if table is None:  # ML.DETECT_ANOMALIES on the training data: re-run the training query
            info = model.info
            table = self.warehouse.query(
                info["query"], project=info["project"], default_dataset=info.get("default_dataset")
            ).table
        return functions.detect_anomalies(model, table, settings)
