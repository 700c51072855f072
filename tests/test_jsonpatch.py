"""RFC 6902 examples (appendix A) and the Perplexity root-replace case for perplexity.jsonpatch."""

import pytest

from perplexity.jsonpatch import JsonPatchError, apply_patch


@pytest.mark.parametrize(
    ("doc", "patch", "expected"),
    [
        ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"foo": "bar", "baz": "qux"}),
        ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
        (
            {"baz": "qux", "foo": "bar"},
            [{"op": "replace", "path": "/baz", "value": "boo"}],
            {"baz": "boo", "foo": "bar"},
        ),
        (
            {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
            [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
            {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}},
        ),
        (
            {"foo": ["all", "grass", "cows", "eat"]},
            [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
            {"foo": ["all", "cows", "eat", "grass"]},
        ),
        (
            {"foo": ["bar"]},
            [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}],
            {"foo": ["bar", ["abc", "def"]]},
        ),
        ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
        ({"a": [1]}, [{"op": "copy", "from": "/a", "path": "/b"}], {"a": [1], "b": [1]}),
        ({}, [{"op": "replace", "path": "", "value": {"chunks": []}}], {"chunks": []}),
        ({"chunks": ["a"]}, [{"op": "add", "path": "/chunks/1", "value": "b"}], {"chunks": ["a", "b"]}),
    ],
)
def test_rfc6902_examples(doc, patch, expected):
    assert apply_patch(doc, patch) == expected


@pytest.mark.parametrize(
    ("doc", "patch"),
    [
        ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}]),
        ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/5", "value": 2}]),
        ({"foo": [1]}, [{"op": "add", "path": "/foo/01", "value": 2}]),
        ({"foo": 1}, [{"op": "remove", "path": "/bar"}]),
        ({}, [{"op": "frobnicate", "path": "/a"}]),
        ({}, [{"op": "add", "path": "a", "value": 1}]),
        ({}, [{"op": "add", "value": 1}]),
        ({}, [{"op": "move", "path": "/a"}]),
        ({}, ["not an op"]),
    ],
)
def test_invalid_patches_raise(doc, patch):
    with pytest.raises(JsonPatchError):
        apply_patch(doc, patch)


def test_the_root_replace_returns_the_new_document():
    doc = {"old": True}
    assert apply_patch(doc, [{"op": "replace", "path": "", "value": [1, 2]}]) == [1, 2]
