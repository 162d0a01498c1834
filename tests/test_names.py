"""Resource names: the Runhouse forms map reversibly and injectively onto Prefect's ``[a-z0-9-]`` block names."""

from __future__ import annotations

import random
import re

import pytest

from rh_prefect import names
from rh_prefect.errors import InvalidName, RhError

BLOCK_NAME = re.compile(r"^[a-z0-9-]+$")


def roundtrip(name: str) -> str:
    full = names.parse(name).full
    encoded = names.encode(full)
    assert BLOCK_NAME.match(encoded), (name, encoded)
    assert names.decode(encoded) == full, (name, encoded)
    return encoded


@pytest.mark.parametrize(
    "name, full, block",
    [
        ("my-folder", "@/my-folder", "my-folder"),
        ("@/my_folder", "@/my_folder", "my--ufolder"),
        ("/ds/bert_preproc", "/ds/bert_preproc", "--sds--sbert--upreproc"),
        ("MyFolder", "@/MyFolder", "--cmy--cfolder"),
        ("v1.2.tar", "@/v1.2.tar", "v1--d2--dtar"),
        ("a--b", "@/a--b", "a--h-b"),
        # hyphen-zero is ordinary text (an escape like "-0s" would have turned this into "model/hot")
        ("model-0shot", "@/model-0shot", "model-0shot"),
    ],
)
def test_documented_forms_roundtrip(name, full, block):
    rname = names.parse(name)
    assert rname.full == full
    assert rname.block_name == block
    assert names.decode(block) == full


def test_namespace_and_leaf():
    rname = names.parse("/ds/bert_preproc")
    assert (rname.namespace, rname.leaf) == ("/ds", "bert_preproc")
    assert names.parse("my-folder").namespace == "@"
    assert names.parse("/ds/sub/x").namespace == "/ds/sub"


def test_default_namespace_forms_are_one_name():
    # "my-folder" and "@/my-folder" are the same resource (current namespace is "@").
    assert names.parse("my-folder").block_name == names.parse("@/my-folder").block_name
    assert names.display("@/my-folder") == "my-folder"
    assert names.display("/ds/x") == "/ds/x"


def test_current_namespace_from_environment(monkeypatch):
    monkeypatch.setenv("RH_PREFECT_NAMESPACE", "team")
    assert names.parse("x").full == "/team/x"
    assert names.display("/team/x") == "/team/x"


@pytest.mark.parametrize(
    "group",
    [
        # forms that differ only in characters the encoding must keep apart
        ["my-folder", "my_folder", "my.folder", "/my/folder", "/my-folder", "MY-folder", "my-Folder"],
        ["a-0b", "a-0B", "a_0b", "a.0b", "a0b", "a-0hb", "a--0b", "/a/0b", "A-0b"],
        ["x-0s", "x/s", "/x/s", "x_s", "x-s", "x-0S", "x-0cs", "xS"],
        ["a-", "a_", "a.", "a--", "a-_", "a_-", "a-.", "/a-/b", "/a/b"],
        ["h", "a-0h", "a-0hh", "a--0h", "a-0-0h"],
        ["a--b", "a-B", "a_b", "a.b", "a---b", "a--hb", "/a/b", "a-/b", "a--s", "a/s"],
    ],
)
def test_similar_names_never_collide(group):
    encoded = {}
    for name in group:
        try:
            names.parse(name)
        except InvalidName:
            continue
        enc = roundtrip(name)
        full = names.parse(name).full
        assert encoded.setdefault(enc, full) == full, f"{name!r} collides with {encoded[enc]!r} as {enc!r}"


def _random_segment(rng: random.Random) -> str:
    # Heavy on the characters of the escape codes so collisions would show up if the mapping had any.
    first = rng.choice("ab0cdhsuAZ9")
    rest = "".join(rng.choice("---0hcsudAB._x9") for _ in range(rng.randint(0, 8)))
    return first + rest


def test_encoding_is_injective_and_prefect_safe_property():
    rng = random.Random(20240601)
    seen: dict[str, str] = {}
    for _ in range(5000):
        segments = [_random_segment(rng) for _ in range(rng.randint(1, 3))]
        form = rng.choice(["bare", "at", "abs"])
        name = {"bare": segments[0], "at": "@/" + "/".join(segments), "abs": "/" + "/".join(segments)}[form]
        full = names.parse(name).full
        enc = roundtrip(name)
        assert seen.setdefault(enc, full) == full, f"{full!r} and {seen[enc]!r} both encode to {enc!r}"
    assert len(seen) > 4000  # the generator really produced thousands of distinct names


@pytest.mark.parametrize(
    "bad, words",
    [
        ("", "empty"),
        (" my-folder", "whitespace"),
        ("my folder", "not valid"),
        ("/ds/../x", "not valid"),
        ("/ds//x", "not valid"),
        ("-leading", "starting with a letter or digit"),
        ("my/", "not valid"),
        ("caf\u00e9", "not valid"),
        ("a" * 250, "too long"),
    ],
)
def test_invalid_names_raise_helpful_error(bad, words):
    with pytest.raises(InvalidName) as info:
        names.parse(bad)
    message = str(info.value)
    assert words in message
    assert isinstance(info.value, RhError) and isinstance(info.value, ValueError)
    if words == "not valid":
        assert "e.g. 'my-folder'" in message  # tells the user what a good name looks like


def test_non_string_name_is_rejected():
    with pytest.raises(InvalidName, match="must be a string, got int"):
        names.parse(42)  # type: ignore[arg-type]
