"""Model evaluations: `models/{m}[@v]/evaluations:import`, list and get (Vertex ModelEvaluation)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from loopml.errors import InvalidArgument, NotFound
from loopml.metadata import Database
from loopml.metadata.registry_tables import ModelEvaluationRow
from loopml.metadata.tables import ModelRow, ModelVersionRow
from loopml.refs import new_numeric_id, now, rfc3339
from loopml.registry import store
from loopml.registry.listing import paginate

EVALUATION_ID_RE = re.compile(r"^[0-9]{1,32}\Z")
_KNOWN = {"displayName", "metricsSchemaUri", "metrics"}
_OUTPUT_ONLY = {"name", "createTime"}


class EvaluationService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def import_evaluation(self, project: str, location: str, ref: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("modelEvaluation"), dict):
            raise InvalidArgument('Request body must be {"modelEvaluation": {...}}.')
        ev = body["modelEvaluation"]
        for key in ("displayName", "metricsSchemaUri"):
            if ev.get(key) is not None and not isinstance(ev[key], str):
                raise InvalidArgument(f"modelEvaluation.{key} must be a string.")
        metrics = ev.get("metrics", {})
        if not isinstance(metrics, dict):
            raise InvalidArgument("modelEvaluation.metrics must be an object.")
        model_id, version = store.split_ref(ref)
        with self.db.session() as session:
            model = store.get_model_row(session, project, location, model_id)
            v = store.resolve_version_row(session, model, version)
            row = ModelEvaluationRow(
                evaluation_id=new_numeric_id(16),
                model_version_pk=v.pk,
                display_name=ev.get("displayName") or "",
                metrics_schema_uri=ev.get("metricsSchemaUri") or "",
                metrics=metrics,
                extra={k: val for k, val in ev.items() if k not in _KNOWN and k not in _OUTPUT_ONLY},
                create_time=now(),
            )
            session.add(row)
            session.flush()
            return self._json(model, v, row)

    def list_evaluations(
        self,
        project: str,
        location: str,
        ref: str,
        *,
        filter: str | None = None,
        page_size: Any = None,
        page_token: str | None = None,
    ) -> dict[str, Any]:
        """Evaluations of the addressed version (all versions when the ref has no version)."""
        model_id, version = store.split_ref(ref)
        with self.db.session() as session:
            model = store.get_model_row(session, project, location, model_id)
            versions = (
                [store.resolve_version_row(session, model, version)]
                if version is not None
                else list(model.versions)
            )
            by_pk = {v.pk: v for v in versions}
            rows = session.scalars(
                select(ModelEvaluationRow)
                .where(ModelEvaluationRow.model_version_pk.in_(list(by_pk)))
                .order_by(ModelEvaluationRow.pk)
            ).all()
            items = [self._json(model, by_pk[r.model_version_pk], r) for r in rows]
        page, token = paginate(
            items,
            filter_text=filter,
            order_by=None,
            page_size=page_size,
            page_token=page_token,
            id_key="evaluation_id",
        )
        out: dict[str, Any] = {"modelEvaluations": page}
        if token:
            out["nextPageToken"] = token
        return out

    def get_evaluation(self, project: str, location: str, ref: str, evaluation_id: str) -> dict[str, Any]:
        if not EVALUATION_ID_RE.match(evaluation_id):
            raise InvalidArgument(f"Invalid evaluation id {evaluation_id!r}.")
        model_id, _version = store.split_ref(ref)
        with self.db.session() as session:
            model = store.get_model_row(session, project, location, model_id)
            found = session.execute(
                select(ModelEvaluationRow, ModelVersionRow)
                .join(ModelVersionRow, ModelVersionRow.pk == ModelEvaluationRow.model_version_pk)
                .where(
                    ModelVersionRow.model_pk == model.pk, ModelEvaluationRow.evaluation_id == evaluation_id
                )
            ).first()
            if found is None:
                raise NotFound(f"Evaluation {evaluation_id} of model {model_id} not found.")
            return self._json(model, found[1], found[0])

    @staticmethod
    def _json(model: ModelRow, version: ModelVersionRow, row: ModelEvaluationRow) -> dict[str, Any]:
        body = dict(row.extra or {})
        body.update(
            {
                "name": f"{store.model_name(model.project, model.location, model.model_id)}"
                f"/evaluations/{row.evaluation_id}",
                "modelVersionId": version.version_id,
                "displayName": row.display_name,
                "metricsSchemaUri": row.metrics_schema_uri,
                "metrics": row.metrics,
                "createTime": rfc3339(row.create_time),
            }
        )
        return body
