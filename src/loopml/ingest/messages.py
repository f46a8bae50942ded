"""Subscription runtime state and the Pub/Sub JSON of logged messages."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from loopml.ingest.log import Message
from loopml.ingest.resources import SubscriptionSpec
from loopml.refs import rfc3339


@dataclass
class SubState:
    sub_id: int
    project: str
    name: str
    topic_id: int | None
    spec: SubscriptionSpec
    delivered: int = 0
    last_error: str = ""
    task: asyncio.Task[None] | None = None

    @property
    def full_name(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.name}"


def publish_time(msg: Message) -> str:
    return rfc3339(datetime.fromtimestamp(msg.publish_us / 1_000_000, UTC)) or ""


def message_json(msg: Message) -> dict[str, Any]:
    """The Pub/Sub PubsubMessage JSON of a logged message."""
    published = publish_time(msg)
    body: dict[str, Any] = {
        "data": base64.b64encode(msg.data).decode(),
        "attributes": orjson.loads(msg.attrs) if msg.attrs else {},
        "messageId": msg.message_id,
        "publishTime": published,
    }
    if msg.okey:
        body["orderingKey"] = msg.okey
    return body


def attributes_of(msg: Message) -> dict[str, str]:
    return orjson.loads(msg.attrs) if msg.attrs else {}


def matches(spec: SubscriptionSpec, msg: Message) -> bool:
    return spec.filter is None or bool(spec.filter({"attributes": attributes_of(msg)}))
