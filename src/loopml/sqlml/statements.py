"""Parsing of the BigQuery ML statements .

    CREATE [OR REPLACE] MODEL [IF NOT EXISTS] [project.]dataset.model OPTIONS(k = v, ...) AS query
    DROP MODEL [IF EXISTS] [project.]dataset.model
    EXPORT MODEL [project.]dataset.model OPTIONS(uri = 'gs://...')
    ALTER MODEL [IF EXISTS] [project.]dataset.model SET OPTIONS(k = v, ...)

The header and OPTIONS list are parsed here; the query after `AS` is passed to the warehouse as
text. Unsupported clauses (TRANSFORM, INPUT/OUTPUT, REMOTE) are refused with a message naming them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loopml.errors import InvalidQuery
from loopml.refs import PROJECT_RE
from loopml.sqlml.sqltext import Scanner

_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")


@dataclass(frozen=True)
class ModelPath:
    project: str
    dataset: str
    model: str

    @property
    def full(self) -> str:
        return f"{self.project}.{self.dataset}.{self.model}"


@dataclass
class CreateModel:
    path: ModelPath
    replace: bool
    if_not_exists: bool
    options: dict[str, Any]  # upper-case option name -> literal value
    query: str
    sql: str


@dataclass
class DropModel:
    path: ModelPath
    if_exists: bool
    sql: str


@dataclass
class ExportModel:
    path: ModelPath
    options: dict[str, Any]
    sql: str


@dataclass
class AlterModel:
    path: ModelPath
    if_exists: bool
    options: dict[str, Any]  # upper-case option name -> value (LABELS: [[key, value], ...])
    sql: str


ALTER_OPTIONS = (
    "VERTEX_AI_MODEL_ID",
    "VERTEX_AI_MODEL_VERSION_ALIASES",
    "DESCRIPTION",
    "LABELS",
    "EXPIRATION_TIMESTAMP",
)
_ALTER_REFUSED = {
    "KMS_KEY_NAME": "customer-managed encryption keys are not supported by loopml",
    "DEPLOY_MODEL": "deploy the registered model to a Vertex AI endpoint instead",
    "ENDPOINT_IDLE_TTL": "loopml does not manage endpoints for BigQuery ML models",
    "MODEL_REGISTRY": "set VERTEX_AI_MODEL_ID to register an existing model",
}


def resolve_path(
    parts: list[str], project: str, default_dataset: str | None, what: str = "model"
) -> ModelPath:
    if len(parts) == 1:
        if not default_dataset:
            raise InvalidQuery(
                f"{what.capitalize()} name {parts[0]!r} is missing a dataset; write dataset.{parts[0]}."
            )
        parts = [project, default_dataset, parts[0]]
    elif len(parts) == 2:
        parts = [project, *parts]
    elif len(parts) != 3:
        raise InvalidQuery(f"Invalid {what} name {'.'.join(parts)!r}: use [project.]dataset.{what}.")
    proj, ds, name = parts
    if not PROJECT_RE.match(proj):
        raise InvalidQuery(f"Invalid project id {proj!r}.")
    if not _DATASET_RE.match(ds):
        raise InvalidQuery(f"Invalid dataset id {ds!r}: letters, digits and underscores only.")
    if not _NAME_RE.match(name):
        raise InvalidQuery(f"Invalid {what} name {name!r}: at most 1,024 letters, digits and underscores.")
    return ModelPath(proj, ds, name)


def statement_kind(sql: str) -> str | None:
    """ "CREATE_MODEL", "DROP_MODEL", "EXPORT_MODEL" or None for any other statement."""
    sc = Scanner(sql)
    try:
        if sc.accept("CREATE"):
            sc.accept("OR", "REPLACE")
            if sc.accept("TEMP") or sc.accept("TEMPORARY"):
                return "CREATE_MODEL" if sc.peek_word() == "MODEL" else None
            return "CREATE_MODEL" if sc.peek_word() == "MODEL" else None
        if sc.accept("DROP", "MODEL"):
            return "DROP_MODEL"
        if sc.accept("EXPORT", "MODEL"):
            return "EXPORT_MODEL"
        if sc.accept("ALTER", "MODEL"):
            return "ALTER_MODEL"
    except InvalidQuery:
        return None
    return None


def _options(sc: Scanner) -> dict[str, Any]:
    sc.expect_char("(")
    options: dict[str, Any] = {}
    if sc.accept_char(")"):
        return options
    while True:
        name = sc.identifier().upper()
        sc.expect_char("=")
        value = sc.literal()
        if name in options:
            raise InvalidQuery(f"Option {name} is given more than once.")
        options[name] = value
        if sc.accept_char(")"):
            return options
        sc.expect_char(",")


def _statement_end(sc: Scanner) -> None:
    sc.accept_char(";")
    if not sc.at_end():
        raise sc.error("unexpected text after the statement")


def parse_create_model(sql: str, project: str, default_dataset: str | None) -> CreateModel:
    sc = Scanner(sql)
    sc.expect("CREATE")
    replace = sc.accept("OR", "REPLACE")
    if sc.accept("TEMP") or sc.accept("TEMPORARY"):
        raise InvalidQuery("CREATE TEMP MODEL is not supported by loopml; create a model in a dataset.")
    sc.expect("MODEL")
    if_not_exists = sc.accept("IF", "NOT", "EXISTS")
    if replace and if_not_exists:
        raise InvalidQuery("CREATE OR REPLACE MODEL cannot be combined with IF NOT EXISTS.")
    path = resolve_path(sc.path(), project, default_dataset)
    word = sc.peek_word()
    if word == "TRANSFORM":
        raise InvalidQuery(
            "The TRANSFORM clause of CREATE MODEL is not supported by loopml; "
            "compute the features in the AS query instead."
        )
    if word in ("INPUT", "OUTPUT"):
        raise InvalidQuery(f"The {word} clause (imported or remote models) is not supported by loopml.")
    if word == "REMOTE":
        raise InvalidQuery("Remote models (REMOTE WITH CONNECTION) are not supported by loopml.")
    options: dict[str, Any] = {}
    if sc.accept("OPTIONS"):
        options = _options(sc)
    if not sc.accept("AS"):
        if sc.at_end() or sc.peek_char() == ";":
            raise InvalidQuery(
                "CREATE MODEL needs a training query: CREATE MODEL ds.m OPTIONS(...) AS SELECT ..."
            )
        raise sc.error("expected OPTIONS(...) or AS")
    query = sc.text[sc.pos :].strip().rstrip(";").strip()
    if query.startswith("(") and query.endswith(")"):
        inner = Scanner(query)
        body = inner.balanced()
        if inner.at_end():
            query = body.strip()
    if not query:
        raise InvalidQuery("CREATE MODEL ... AS needs a query after AS.")
    return CreateModel(path, replace, if_not_exists, options, query, sql)


def parse_drop_model(sql: str, project: str, default_dataset: str | None) -> DropModel:
    sc = Scanner(sql)
    sc.expect("DROP", "MODEL")
    if_exists = sc.accept("IF", "EXISTS")
    path = resolve_path(sc.path(), project, default_dataset)
    _statement_end(sc)
    return DropModel(path, if_exists, sql)


def parse_export_model(sql: str, project: str, default_dataset: str | None) -> ExportModel:
    sc = Scanner(sql)
    sc.expect("EXPORT", "MODEL")
    path = resolve_path(sc.path(), project, default_dataset)
    options: dict[str, Any] = {}
    if sc.accept("OPTIONS"):
        options = _options(sc)
    _statement_end(sc)
    return ExportModel(path, options, sql)


def _alter_value(sc: Scanner, name: str) -> Any:
    if name == "LABELS":  # [("key", "value"), ...] or STRUCT("key", "value") entries
        sc.expect_char("[")
        pairs: list[list[Any]] = []
        if sc.accept_char("]"):
            return pairs
        while True:
            sc.accept("STRUCT")
            sc.expect_char("(")
            key = sc.literal()
            sc.expect_char(",")
            value = sc.literal()
            sc.expect_char(")")
            pairs.append([key, value])
            if sc.accept_char("]"):
                return pairs
            sc.expect_char(",")
    if name == "EXPIRATION_TIMESTAMP" and sc.accept("TIMESTAMP"):
        return sc.string()
    return sc.literal()


def parse_alter_model(sql: str, project: str, default_dataset: str | None) -> AlterModel:
    sc = Scanner(sql)
    sc.expect("ALTER", "MODEL")
    if_exists = sc.accept("IF", "EXISTS")
    path = resolve_path(sc.path(), project, default_dataset)
    if not sc.accept("SET", "OPTIONS"):
        raise InvalidQuery(
            "ALTER MODEL supports SET OPTIONS(...) only: ALTER MODEL ds.m SET OPTIONS(description = '...')."
        )
    sc.expect_char("(")
    options: dict[str, Any] = {}
    if not sc.accept_char(")"):
        while True:
            name = sc.identifier().upper()
            if name in _ALTER_REFUSED:
                raise InvalidQuery(f"ALTER MODEL option {name} is not supported: {_ALTER_REFUSED[name]}.")
            if name not in ALTER_OPTIONS:
                raise InvalidQuery(
                    f"Unknown or unsupported ALTER MODEL option {name}; loopml supports "
                    f"{', '.join(o.lower() for o in ALTER_OPTIONS)}."
                )
            if name in options:
                raise InvalidQuery(f"Option {name} is given more than once.")
            sc.expect_char("=")
            options[name] = _alter_value(sc, name)
            if sc.accept_char(")"):
                break
            sc.expect_char(",")
    if not options:
        raise InvalidQuery("ALTER MODEL ... SET OPTIONS() needs at least one option.")
    _statement_end(sc)
    return AlterModel(path, if_exists, options, sql)
