"""Request bodies of the publish fast path (loopml.ingest.asgi): `/ingest` splitting and `:publish` validation."""

from __future__ import annotations

import re

import orjson
import pytest

from loopml.errors import InvalidArgument
from loopml.ingest.asgi import ids_json, publish_messages, split_events


def test_array_elements_keep_their_json_text() -> None:
    body = b' [ {"a" : 1, "s": "x, [y]"} ,\n {"t": "tw\\u00e9"}, { }, {"n": {"deep": [1, {"k": null}]}} ]\n'
    datas, is_array = split_events(body)
    assert is_array
    assert datas == [
        b'{"a" : 1, "s": "x, [y]"}',
        b'{"t": "tw\\u00e9"}',
        b"{ }",
        b'{"n": {"deep": [1, {"k": null}]}}',
    ]
    assert [orjson.loads(d) for d in datas] == orjson.loads(body)


def test_single_values_and_unicode() -> None:
    assert split_events(b'  {"event": "purchase"}\n') == ([b'{"event": "purchase"}'], False)
    text = '[{"name": "Zoë ☃"}]'.encode()
    assert split_events(text) == ([text[1:-1]], True)


@pytest.mark.parametrize(
    "body",
    [b"", b"[", b"[1,]", b'[{"a": }]', b"{not json", b"[1] [2]", b'["\xff\xfe"]', b'{"a": "\xc3"}', b"[NaN]"],
)
def test_malformed_bodies_are_400s(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="Malformed JSON"):
        split_events(body)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"42", "a number"),
        (b" -1.5e3 ", "a number"),
        (b'"[not an array]"', "a string"),
        (b"null", "null"),
        (b"true", "a boolean"),
        (b"false", "a boolean"),
    ],
)
def test_a_bare_scalar_body_is_a_400(body: bytes, kind: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^The request body is {kind}, not a JSON object"):
        split_events(body)


@pytest.mark.parametrize(
    ("body", "index", "kind"),
    [
        (b"[1]", 0, "a number"),
        (b'[{"a": 1}, "x"]', 1, "a string"),
        (b"[{}, {}, null, 3]", 2, "null"),
        (b"[{}, true]", 1, "a boolean"),
        (b"[{}, [{}]]", 1, "an array"),
        (b"[[{}]]", 0, "an array"),
    ],
)
def test_an_array_with_a_non_object_element_is_a_400_naming_it(body: bytes, index: int, kind: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^Element {index} of the JSON array is {kind}, not an object"):
        split_events(body)


def test_empty_array_is_a_400() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        split_events(b" [ ] ")


def test_ids_json() -> None:
    assert orjson.loads(ids_json(41, 3)) == ["41", "42", "43"]
    assert orjson.loads(ids_json(7, 1)) == ["7"]


def test_publish_request_bodies() -> None:
    body = b'{"messages": [{"data": "eA==", "messageId": "ignored", "orderingKey": "k"}, {"attributes": {"a": "b"}}]}'
    assert publish_messages(body) == ([b"x", b""], [None, '{"a":"b"}'], ["k", None])
    assert publish_messages(b'{"messages": [{"data": "eA==", "attributes": null}]}') == ([b"x"], None, None)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "Invalid field 'messages'"),
        (b'{"messages": []}', "Invalid field 'messages'"),
        (b'{"messages": [5]}', "Invalid field 'messages[0]'"),
        (b'{"messages": [{}]}', "Invalid field 'messages[0]': a message needs data or attributes"),
        (b'{"messages": [{"data": 1}]}', "Invalid field 'messages[0].data'"),
        (b'{"messages": [{"data": "***"}]}', "Invalid field 'messages[0].data': it is not valid base64"),
        (
            b'{"messages": [{"data": "eA==", "attributes": {"k": 1}}]}',
            "Invalid field 'messages[0].attributes'",
        ),
        (b'{"messages": [{"data": "eA==", "orderingKey": []}]}', "Invalid field 'messages[0].orderingKey'"),
        (b'{"messages": [', "Malformed JSON"),
        (b"[]", "Invalid publish request"),
    ],
)
def test_bad_publish_requests_name_the_field(body: bytes, error: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(error)):
        publish_messages(body)
