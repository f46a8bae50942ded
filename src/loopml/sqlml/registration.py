"""Registering SQL models in the Vertex Model Registry (MODEL_REGISTRY = 'VERTEX_AI').

- The first BQML model registered under an id becomes version 1 of `models/<id>`; a different
  BQML model registered under the same id becomes the next version. The new version always
  takes the `default` alias plus VERTEX_AI_MODEL_VERSION_ALIASES.
- CREATE OR REPLACE of a registered model registers the new model as a new version and then
  deletes the version it replaces. If that version is deployed it is kept (it keeps serving,
  without the `default` alias) and the SQL model no longer points at it; undeploy and delete it
  yourself when traffic has moved.
- DROP MODEL deletes the registry version (the whole registry model when it is the only
  version) and is refused, changing nothing, while the version is deployed.
"""

from __future__ import annotations

import logging
from typing import Any

from loopml.errors import FailedPrecondition, LoopmlError, NotFound

log = logging.getLogger(__name__)

MULTI_REGIONS = {"US": "us-central1", "EU": "europe-west4"}


def vertex_location(dataset_location: str | None) -> str:
    """BigQuery dataset location → Vertex region (US → us-central1, EU → europe-west4)."""
    loc = (dataset_location or "US").strip()
    return MULTI_REGIONS.get(loc.upper(), loc.lower())


class Registrar:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def register(
        self,
        project: str,
        location: str,
        model_id: str,
        aliases: list[str],
        artifact_uri: str,
        lineage: dict[str, Any],
        description: str | None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "displayName": model_id,
            "artifactUri": artifact_uri,
            "versionAliases": ["default", *[a for a in aliases if a != "default"]],
            "labels": {**(labels or {}), "loopml-source": "bigquery-ml"},
        }
        if description:
            body["description"] = description
        try:
            self.registry.get_model(project, location, model_id)
            exists = True
        except NotFound:
            exists = False
        if exists:
            parent = f"projects/{project}/locations/{location}/models/{model_id}"
            resp = self.registry.upload_model(project, location, body, parent_model=parent, lineage=lineage)
        else:
            resp = self.registry.upload_model(project, location, body, model_id=model_id, lineage=lineage)
        link = {
            "project": project,
            "location": location,
            "model_id": model_id,
            "model": resp["model"],
            "version": str(resp["modelVersionId"]),
        }
        log.info("registered BQML model as %s@%s", resp["model"], link["version"])
        return link

    def add_aliases(self, link: dict[str, Any], aliases: list[str]) -> None:
        """Give the linked version these aliases (taken from any other version holding them)."""
        if aliases:
            self.registry.merge_version_aliases(
                link["project"], link["location"], f"{link['model_id']}@{link['version']}", list(aliases)
            )

    def _version(self, link: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.registry.get_model(
                link["project"], link["location"], f"{link['model_id']}@{link['version']}"
            )
        )

    def aliases(self, link: dict[str, Any]) -> list[str]:
        """The aliases the linked version holds now."""
        return list(self._version(link).get("versionAliases") or [])

    def describe(
        self, link: dict[str, Any], description: str | None, labels: dict[str, str] | None
    ) -> dict[str, Any]:
        """Set the linked version's description and/or labels (None: leave as is).

        Returns what `write_fields` needs to put the previous values back ({} when nothing was set).
        """
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if labels is not None:
            body["labels"] = {**labels, "loopml-source": "bigquery-ml"}
        if not body:
            return {}
        before = self._version(link)
        previous = {key: before.get(key) or ("" if key == "description" else {}) for key in body}
        self.write_fields(link, body)
        return previous

    def write_fields(self, link: dict[str, Any], body: dict[str, Any]) -> None:
        """Write the linked version's description/labels as given (e.g. what `describe` returned)."""
        if body:
            self.registry.update_model(
                link["project"],
                link["location"],
                f"{link['model_id']}@{link['version']}",
                body,
                ",".join(body),
            )

    def deployments(self, link: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            model = self.registry.get_model(
                link["project"], link["location"], f"{link['model_id']}@{link['version']}"
            )
        except NotFound:
            return []
        return list(model.get("deployedModels") or [])

    def remove(self, link: dict[str, Any]) -> None:
        """Delete the linked version (the model if it is the only one). NotFound is fine."""
        project, location, model_id, version = (
            link["project"],
            link["location"],
            link["model_id"],
            link["version"],
        )
        try:
            listing = self.registry.list_versions(project, location, model_id, page_size=1000)
        except NotFound:
            return
        versions = [str(v.get("versionId")) for v in listing.get("models", [])]
        if version not in versions:
            return
        if self.deployments(link):
            raise FailedPrecondition(
                f"Model version {link['model']}@{version} is deployed: undeploy it before dropping the model."
            )
        if versions == [version]:
            self.registry.delete_model(project, location, model_id)
            return
        holder = next(
            (str(v["versionId"]) for v in listing["models"] if "default" in (v.get("versionAliases") or [])),
            None,
        )
        if holder == version:
            others = sorted((v for v in versions if v != version), key=int)
            self.registry.merge_version_aliases(project, location, f"{model_id}@{others[-1]}", ["default"])
        self.registry.delete_version(project, location, f"{model_id}@{version}")

    def remove_quietly(self, link: dict[str, Any]) -> bool:
        """remove(), but a deployed version is kept (returns False) instead of raising."""
        try:
            self.remove(link)
            return True
        except FailedPrecondition as exc:
            log.warning("kept registry version %s@%s: %s", link["model"], link["version"], exc.message)
            return False
        except LoopmlError:
            log.exception("could not remove registry version %s@%s", link["model"], link["version"])
            return False
