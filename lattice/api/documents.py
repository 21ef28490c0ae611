"""YAML/JSON documents in, validated resources out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
import yaml
from pydantic_core import ErrorDetails

from lattice.api.errors import FieldError, ValidationError
from lattice.api.kinds import KINDS, KindInfo, kind_of, kinds_named
from lattice.api.meta import ObjectMeta

MAX_DOCUMENT_BYTES = 1 << 20
MAX_DEPTH = 64  # nesting of mappings and lists; Istio's deepest resources need about 15


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML without aliases (`*name`: a few hundred bytes can expand to gigabytes, the
    "billion laughs") and with nesting bounded, so no input can exhaust memory or the stack."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted: write the value out", mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml_documents(text: str) -> list:
    """Every document of a YAML (or JSON) text, by the strict loader; yaml.YAMLError if refused."""
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    metadata: ObjectMeta
    spec: Any  # the kind's spec model (api/kinds.py): which one depends on `kind`

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def kind_key(self) -> str:
        """The name this resource's kind is stored under: its Kind, or `Kind.group` where two
        groups share the Kind (`lattice.api.kinds`)."""
        info = kind_of(self.api_version, self.kind)
        return info.key if info is not None else self.kind

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind_key, self.namespace, self.name)

    def metadata_dict(self) -> dict:
        return self.metadata.model_dump(exclude_defaults=True) | {"name": self.name, "namespace": self.namespace}

    def spec_dict(self) -> dict:
        return self.spec.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)

    def to_dict(self) -> dict:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": self.metadata_dict(),
            "spec": self.spec_dict(),
        }


def parse_documents(text: str, source: str = "<input>") -> list[Resource]:
    """Every resource in a multi-document YAML (or JSON) text, all validated, or ValidationError."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES * 8:
        raise ValidationError(source, [FieldError("", f"input is larger than {MAX_DOCUMENT_BYTES * 8} bytes")])
    try:
        docs = load_yaml_documents(text)
    except yaml.YAMLError as e:
        raise ValidationError(source, [FieldError("", f"not valid YAML: {e}")]) from None
    out = []
    for i, doc in enumerate(docs, start=1):
        label = source if len(docs) == 1 else f"{source} (document {i})"
        out.extend(_expand(doc, label))
    return out


def _expand(doc: Any, source: str) -> list[Resource]:
    # `kind: List` is what `kubectl get -o yaml` writes; accept it so round trips work.
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return [validate_object(item, f"{source} items[{j}]") for j, item in enumerate(doc["items"])]
    return [validate_object(doc, source)]


def validate_object(obj: Any, source: str = "<input>") -> Resource:
    if not isinstance(obj, dict):
        raise ValidationError(
            source,
            [FieldError("", f"expected a mapping with apiVersion, kind, metadata, spec; got {type(obj).__name__}")],
        )
    info = _kind_info(obj, source)
    errors: list[FieldError] = []
    metadata = _model(ObjectMeta, obj.get("metadata"), "metadata", errors)
    spec = _model(info.spec_model, obj.get("spec", {}), "spec", errors)
    # A kind whose metadata carries meaning (AuthorizationPolicy's dry-run annotation) checks it here.
    if metadata is not None and hasattr(info.spec_model, "metadata_errors"):
        errors += info.spec_model.metadata_errors(metadata, spec)
    unknown = sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec", "status"})
    errors += [FieldError(k, "unknown top-level field") for k in unknown]
    if errors:
        raise ValidationError(f"{source} {info.kind}/{_name_of(obj)}", errors)
    return Resource(obj["apiVersion"], info.kind, metadata, spec)


def _kind_info(obj: dict, source: str) -> KindInfo:
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    candidates = kinds_named(kind) if isinstance(kind, str) else []
    if not isinstance(kind, str) or not candidates:
        known = ", ".join(sorted({k.kind for k in KINDS.values()}))
        raise ValidationError(source, [FieldError("kind", f"unknown kind {kind!r}; Lattice knows {known}")])
    if (
        not isinstance(api_version, str)
        or (info := kind_of(api_version, kind)) is None
        or not info.accepts(api_version)
    ):
        versions = ", ".join(f"{c.group}/{v}" for c in candidates for v in c.versions)
        raise ValidationError(
            source, [FieldError("apiVersion", f"{api_version!r} is not an apiVersion of {kind}; use one of {versions}")]
        )
    return info


def _model(model: type[pydantic.BaseModel], value: Any, prefix: str, errors: list[FieldError]) -> Any:
    if value is None:
        errors.append(FieldError(prefix, "required"))
        return None
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as e:
        errors.extend(FieldError(_path(prefix, err["loc"]), _message(err)) for err in e.errors())
        return None


def _path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _message(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field, or one Lattice does not support yet"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _name_of(obj: dict) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
