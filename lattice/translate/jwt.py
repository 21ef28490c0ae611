"""RequestAuthentication as Envoy's jwt_authn filter on a workload's inbound HTTP listener.

Istio's translation, kept exactly (pilot's `convertToEnvoyJwtConfig`):
- every jwtRule of every policy that applies (`lattice.mesh.request_authn`), sorted by issuer,
  becomes provider `origins-<i>`; its keys are inline (`jwks`, or the control plane's copy of
  `jwksUri`); a `jwksUri` the control plane could not fetch gets a key nobody holds, so its
  tokens fail (401) instead of passing unchecked;
- the requirement lets a request without a token through (an AuthorizationPolicy decides whether
  that is enough), and rejects with 401 any token that is present but invalid, expired, for another
  audience, or from an issuer no rule names. With several providers it is
  OR{P1, P2, …, AND{OR{P1, missing}, OR{P2, missing}, …}}: every token present must be valid, and
  providers reading one location still accept each other's tokens;
- a verified token's payload goes to dynamic metadata `envoy.filters.http.jwt_authn`, under the
  issuer, where the AuthorizationPolicy filters after this one read requestPrincipals and
  `request.auth.claims`; `scope` and `permission` are split on spaces there, as Istio does;
- CORS preflights are not checked (Istio's `bypass_cors_preflight`).

One addition: a request carrying more than one token (in two of the rules' locations, such as the
Authorization header and the `access_token` parameter, or twice in one) is refused with 401 before
the filter runs. Istio calls the principal of such a request undefined; Envoy would judge it on
some of its tokens while the app may read another (`ambiguity_filters`).

Headers the rules fill from a verified token (`outputPayloadToHeader`, `outputClaimToHeaders`) are
cleared by the filter itself on every request (Envoy sanitizes them filter-wide, preflights and
token-less requests included), so a client cannot forge them; the integration tests check it.
"""

from __future__ import annotations

import re

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import empty_pb2

from lattice.api.request_authn import JWTRule
from lattice.mesh import MeshSnapshot, Workload
from lattice.translate.protos import pack

FILTER = "envoy.filters.http.jwt_authn"
AMBIGUITY_FILTER = "lattice.jwt_ambiguity"
SPACE_DELIMITED_CLAIMS = ("permission", "scope")
# An RSA public key whose private half was discarded when it was made: no token verifies with it.
# Stands in for a jwksUri whose keys the control plane could not fetch (Istio's FakeJwks does the same).
UNFETCHED_JWKS = (
    '{"keys":[{"kty":"RSA","kid":"lattice-jwks-unavailable","alg":"RS256","e":"AQAB","n":"'
    "yXIKQsUJscOKiNtMv93EOtSozJpYt-OJ4BR9alYhb7GAK3zCF4UKeNp473arV30vfxdT0LKyqE7NZxOstZhc3Beet8EeAjHC3lfnO1bT"
    "do7xPdl_fVMONGkCtq5t9Ed6Vdh3kBTD6gCnAcS_hv6asZHg4FAFggb1lJ6bjqgnSsSDBdLxR7G8nUNX-NAE-B0AV3MIPjNx8u7TNtaO"
    "lrpaMncZXynZEul7A1Q7Kvtj6eP4VClwd0XaQWQc-LAUn70EzGKzeWU6i64v2gLYJaqLLH2JXOOWTzUhUNTRwXiTKaz0KF0PA75Ppyr"
    'DH1mxoDnHnaugRAfDEHmngc0geoG3MQ"}]}'
)
# Where a rule that names no location looks for its token (Envoy's and Istio's defaults).
DEFAULT_HEADER = jwt.JwtHeader(name="Authorization", value_prefix="Bearer ")
DEFAULT_PARAM = "access_token"


def inbound_filters(snapshot: MeshSnapshot, proxy: Workload) -> list[hcm.HttpFilter]:
    """The filters that authenticate requests to `proxy` (none when no RequestAuthentication applies)."""
    rules = workload_rules(snapshot, proxy)
    if not rules:
        return []
    return [*ambiguity_filters(rules), hcm.HttpFilter(name=FILTER, typed_config=pack(authentication(snapshot, rules)))]


def token_locations(rules: list[JWTRule]) -> list[tuple[str, str, str]]:
    """Every place the rules read a token from: (kind, name, prefix), kind header, param or cookie."""
    found: set[tuple[str, str, str]] = set()
    for rule in rules:
        p = provider(rule, "")
        found.update(("header", h.name.lower(), h.value_prefix) for h in p.from_headers)
        found.update(("param", name, "") for name in p.from_params)
        found.update(("cookie", name, "") for name in p.from_cookies)
    return sorted(found)


def ambiguity_filters(rules: list[JWTRule]) -> list[hcm.HttpFilter]:
    """401 for a request with a token in two locations, or twice in one: a fault filter per case,
    each aborting when all its header matchers match."""
    locations = token_locations(rules)
    cases = [[_present(loc, twice=True)] for loc in locations]
    cases += [[_present(a), _present(b)] for i, a in enumerate(locations) for b in locations[i + 1 :]]
    abort = fault_pb2.FaultAbort(http_status=401, percentage=percent_pb2.FractionalPercent(numerator=100))
    return [
        hcm.HttpFilter(
            name=f"{AMBIGUITY_FILTER}.{i}", typed_config=pack(fault_pb2.HTTPFault(abort=abort, headers=matchers))
        )
        for i, matchers in enumerate(cases)
    ]


def _present(location: tuple[str, str, str], twice: bool = False) -> rc.HeaderMatcher:
    """A token at `location` (or two of them there). Envoy matches a regex against the whole value,
    and a repeated header against its values joined by commas."""
    kind, name, prefix = location
    n = 2 if twice else 1
    if kind == "header":
        regex = "(?is)" + ".*".join([""] + [_escape(prefix)] * n + [""]) if prefix else ("(?s).*,.*" if twice else "")
        if not regex:
            return rc.HeaderMatcher(name=name, present_match=True)
        return rc.HeaderMatcher(name=name, string_match=_regex(regex))
    if kind == "param":
        one = rf"(?:[^#]*&)?{_escape(name)}=.*"
        return rc.HeaderMatcher(
            name=":path", string_match=_regex(rf"(?s)[^?]*\?{one}" + (rf"&{_escape(name)}=.*" if twice else ""))
        )
    one = rf"(?:.*;\s*)?{_escape(name)}=.*"
    return rc.HeaderMatcher(
        name="cookie", string_match=_regex(f"(?s){one}" + (rf";\s*{_escape(name)}=.*" if twice else ""))
    )


def _escape(text: str) -> str:
    """Escape what RE2 reads as syntax (Python's re.escape also escapes spaces, which RE2 refuses)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


def _regex(regex: str) -> string_pb2.StringMatcher:
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))


def workload_rules(snapshot: MeshSnapshot, proxy: Workload) -> list[JWTRule]:
    """Every rule `proxy` enforces, sorted by issuer as Istio sorts them (stable: policy order within)."""
    rules = [rule for p in snapshot.request_authentications_for(proxy) for rule in p.spec.jwt_rules]
    return sorted(rules, key=lambda rule: rule.issuer)


def authentication(snapshot: MeshSnapshot, rules: list[JWTRule]) -> jwt.JwtAuthentication:
    names = [f"origins-{i}" for i in range(len(rules))]
    config = jwt.JwtAuthentication(bypass_cors_preflight=True)
    for name, rule in zip(names, rules, strict=True):
        config.providers[name].CopyFrom(provider(rule, _jwks(snapshot, rule)))
    config.rules.append(jwt.RequirementRule(match=rc.RouteMatch(prefix="/"), requires=requirement(names)))
    return config


def _jwks(snapshot: MeshSnapshot, rule: JWTRule) -> str:
    if rule.jwks is not None:
        return rule.jwks
    if rule.jwks_uri is None:
        return UNFETCHED_JWKS
    return snapshot.jwks.get(rule.jwks_uri, UNFETCHED_JWKS)


def provider(rule: JWTRule, jwks: str) -> jwt.JwtProvider:
    out = jwt.JwtProvider(
        issuer=rule.issuer,
        audiences=rule.audiences,
        local_jwks=base_pb2.DataSource(inline_string=jwks),
        forward=rule.forward_original_token,
        forward_payload_header=rule.output_payload_to_header or "",
        payload_in_metadata=rule.issuer,
        normalize_payload_in_metadata=jwt.JwtProvider.NormalizePayload(space_delimited_claims=SPACE_DELIMITED_CLAIMS),
        claim_to_headers=[
            jwt.JwtClaimToHeader(header_name=c.header, claim_name=c.claim) for c in rule.output_claim_to_headers
        ],
    )
    if not (rule.from_headers or rule.from_params or rule.from_cookies):
        out.from_headers.append(DEFAULT_HEADER)
        out.from_params.append(DEFAULT_PARAM)
        return out
    out.from_headers.extend(jwt.JwtHeader(name=h.name, value_prefix=h.prefix) for h in rule.from_headers)
    out.from_params.extend(rule.from_params)
    out.from_cookies.extend(rule.from_cookies)
    return out


def requirement(names: list[str]) -> jwt.JwtRequirement:
    """Istio's requirement: a missing token passes, a present token must verify with its provider."""
    per_provider = [_any(_provider(n), _missing()) for n in names]
    if len(per_provider) == 1:
        return per_provider[0]
    every_token_valid = jwt.JwtRequirement(requires_all=jwt.JwtRequirementAndList(requirements=per_provider))
    return _any(*(_provider(n) for n in names), every_token_valid)


def _provider(name: str) -> jwt.JwtRequirement:
    return jwt.JwtRequirement(provider_name=name)


def _missing() -> jwt.JwtRequirement:
    return jwt.JwtRequirement(allow_missing=empty_pb2.Empty())


def _any(*requirements: jwt.JwtRequirement) -> jwt.JwtRequirement:
    return jwt.JwtRequirement(requires_any=jwt.JwtRequirementOrList(requirements=requirements))
