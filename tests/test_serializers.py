"""rh_prefect.serializers on their own, through in-memory files: what a Blob stores for each serializer.

No server: part of the fast tier (``-m "not servers"``). Blobs that use them on real systems: test_blob.py.
"""

from __future__ import annotations

import doctest
import io

import pytest

from rh_prefect import serializers
from rh_prefect.errors import RhError
from rh_prefect.serializers import SerializationError


def _roundtrip(name: str, obj):
    buf = io.BytesIO()
    serializers.get(name).dump(obj, buf)
    return buf.getvalue(), serializers.get(name).load(io.BytesIO(buf.getvalue()))


def test_module_example_runs():
    assert doctest.testmod(serializers, raise_on_error=True).attempted >= 4


@pytest.mark.parametrize("name,obj", [
    ("pickle", {"weights": [0.5, 1.5], "step": 3}),
    ("cloudpickle", {"f": (1, 2)}),
    ("json", {"a": [1, 2.5, None, True], "é": "ß"}),
    ("text", "caf\xe9 \u2603\n"),
    ("bytes", b"\x00\xff raw"),
])
def test_each_builtin_serializer_round_trips(name, obj):
    _, back = _roundtrip(name, obj)
    assert back == obj


def test_bytes_and_text_store_exactly_the_data_other_tools_read():
    assert _roundtrip("bytes", bytearray(b"abc"))[0] == b"abc"
    assert _roundtrip("text", "h\xe9llo")[0] == "h\xe9llo".encode("utf-8")
    assert _roundtrip("json", {"k": [1, "\xe9"]})[0] == '{"k": [1, "\xe9"]}'.encode("utf-8")


def test_long_text_is_written_in_pieces_and_comes_back_whole():
    text = "\xe9\u2603x" * (2**20 // 3 + 5)  # longer than one write, multi-byte characters across the pieces
    stored, back = _roundtrip("text", text)
    assert back == text and stored == text.encode("utf-8")


def test_bytes_streams_from_a_binary_file_and_refuses_text():
    data = bytes(range(256)) * 100
    buf = io.BytesIO()
    serializers.get("bytes").dump(io.BytesIO(data), buf)
    assert buf.getvalue() == data
    with pytest.raises(TypeError, match=r"binary mode \('rb'\)"):
        serializers.get("bytes").dump(io.StringIO("text"), io.BytesIO())
    with pytest.raises(TypeError, match="not dict; use serializer='pickle'"):
        serializers.get("bytes").dump({"a": 1}, io.BytesIO())
    with pytest.raises(TypeError, match="stores str, not int"):
        serializers.get("text").dump(3, io.BytesIO())


def test_the_default_follows_the_data():
    assert [serializers.default_for(x) for x in (b"x", memoryview(b"x"), "x", {"x": 1}, 3)] == [
        "bytes", "bytes", "text", "pickle", "pickle"]


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(SerializationError, match="Unknown serializer 'yaml'; use one of: bytes, cloudpickle") as info:
        serializers.get("yaml")
    assert isinstance(info.value, RhError)  # callers catch one hierarchy
    assert {"bytes", "cloudpickle", "json", "pickle", "text"} <= set(serializers.names())


def test_a_registered_serializer_is_found_by_name():
    class Upper(serializers.Serializer):
        name = "rh-test-upper"

        def dump(self, obj, f):
            f.write(obj.upper().encode())

        def load(self, f):
            return f.read().decode().lower()

    serializers.register(Upper())
    assert _roundtrip("rh-test-upper", "shout") == (b"SHOUT", "shout")
    with pytest.raises(TypeError, match=r"takes a Serializer instance, not ABCMeta"):
        serializers.register(Upper)
