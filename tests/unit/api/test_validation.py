"""Resource validation: every Bookinfo routing file parses; bad input names its field."""

from __future__ import annotations

from pathlib import Path

import lattice.demo

import pytest

from lattice.api import UnknownKindError, ValidationError, kind_for, parse_documents
from lattice.api.durations import parse_duration

DATA = Path(lattice.demo.__file__).parent / "networking"


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.yaml")))
def test_bookinfo_routing_files_parse(name):
    resources = parse_documents((DATA / name).read_text(), name)
    assert resources and all(r.namespace == "default" for r in resources)


def test_all_three_istio_versions_are_accepted():
    for version in ("v1alpha3", "v1beta1", "v1"):
        (r,) = parse_documents(
            f"apiVersion: networking.istio.io/{version}\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: "
            f"{{host: r}}\n"
        )
        assert r.api_version == f"networking.istio.io/{version}"


def _errors(text: str) -> list[str]:
    with pytest.raises(ValidationError) as e:
        parse_documents(text, "f.yaml")
    return [str(x) for x in e.value.errors]


VS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("  hosts: []\n", "spec.hosts: List should have at least 1 item"),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r}, weight: -1}]}]\n",
            "spec.http[0].route[0].weight: Input should be greater than or equal to 0",
        ),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r}}], timeout: soon}]\n",
            "spec.http[0].timeout: 'soon' is not a duration",
        ),
        (
            "  hosts: [r]\n  http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: r}}]}]\n",
            "spec.http[0].match[0].uri: set exactly one of exact, prefix or regex (got exact, prefix)",
        ),
        (
            "  hosts: [r]\n  http: [{match: [{uri: {regex: '('}}], route: [{destination: {host: r}}]}]\n",
            "does not compile",
        ),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r}}], mirrorz: {host: x}}]\n",
            "spec.http[0].mirrorz: unknown field, or one Lattice does not support yet",
        ),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r}}], delegate: {name: x}}]\n",
            "spec.http[0].delegate: delegate (VirtualService chaining) is not supported",
        ),
        ("  hosts: [r]\n  gateways: [a/b/c]\n", "spec.gateways: 'a/b/c' is not 'mesh' or a Gateway"),
        ("  hosts: ['*']\n", "hosts: '*' would capture every destination"),
        ("  hosts: [r]\n  http: [{match: [{uri: {regex: '(?=a)'}}], route: [{destination: {host: r}}]}]\n", "RE2"),
        (
            "  hosts: [r]\n  http: [{redirect: {uri: /x}, route: [{destination: {host: r}}]}]\n",
            "exactly one of route, redirect or directResponse (got route, redirect)",
        ),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r}}], retries: {attempts: 2, retryOn: "
            "'5xx,sometimes'}}]\n",
            "unknown retry condition(s) sometimes",
        ),
        (
            "  hosts: [r]\n  http: [{route: [{destination: {host: r, subset: a}}, {destination: {host: r, subset: "
            "b}}]}]\n",
            "give each a weight",
        ),
    ],
)
def test_bad_virtual_service_names_the_field(spec, expected):
    assert any(expected in e for e in _errors(VS + spec)), _errors(VS + spec)


def test_every_error_of_a_document_is_reported_at_once():
    errors = _errors(
        VS + "  hosts: [r]\n  http: [{route: [{destination: {host: r}, weight: -1}], timeout: x, fault: {abort: "
        "{httpStatus: 99}}}]\n"
    )
    assert len(errors) == 3


def test_unknown_kind_and_wrong_version():
    assert (
        "unknown kind 'EnvoyFilter'"
        in _errors("apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: g}\nspec: {}\n")[0]
    )
    assert (
        "is not an apiVersion of VirtualService"
        in _errors(
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: g}\nspec: {hosts: [a]}\n"
        )[0]
    )


def test_bad_names_and_yaml():
    assert any(
        "metadata.name" in e
        for e in _errors(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: Bad_Name}\nspec: {host: r}\n"
        )
    )
    assert "not valid YAML" in _errors("a: [b")[0]


def test_document_number_is_in_the_source():
    text = VS + "  hosts: [a]\n---\n" + VS + "  hosts: []\n"
    with pytest.raises(ValidationError) as e:
        parse_documents(text, "two.yaml")
    assert e.value.source.startswith("two.yaml (document 2)")


def test_kind_names():
    assert kind_for("vs").kind == kind_for("VirtualServices".lower()).kind == "VirtualService"
    assert kind_for("DR").kind == "DestinationRule"
    with pytest.raises(UnknownKindError, match="known types"):
        kind_for("pods")


@pytest.mark.parametrize("text, seconds", [("7s", 7), ("0.5s", 0.5), ("100ms", 0.1), ("1m30s", 90), ("2h", 7200)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "7", "s", "1x", "1s2"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("/(?!admin).*", "look-around"),
        ("(a)\\1", "back-reference"),
        ("(?>a)", "atomic group"),
        ("a*+", "possessive"),
        ("(?(1)a|b)", "conditional"),
        ("a\\Z", "\\Z"),
        ("a{1001}", "more than 1000"),
    ],
)
def test_regexes_envoy_cannot_compile_are_refused_at_apply(pattern, problem):
    spec = (
        f"  hosts: [r]\n  http: [{{match: [{{uri: {{regex: '{pattern}'}}}}], route: [{{destination: {{host: r}}}}]}}]\n"
    )
    (error,) = _errors(VS + spec)
    assert "spec.http[0].match[0].uri" in error and problem in error and "RE2" in error


@pytest.mark.parametrize("pattern", ["/items/[0-9]+", "a{2,1000}", "\\+\\+", "\\(?=x", "a+?", "^/users/([0-9]+)$"])
def test_re2_regexes_pass(pattern):
    assert parse_documents(
        VS + "  hosts: [r]\n  http: "
        f"[{{match: [{{uri: {{regex: '{pattern}'}}}}], route: [{{destination: {{host: r}}}}]}}]\n"
    )
