"""The Kubernetes object envelope and the pydantic base every spec model uses."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Spec(BaseModel):
    """Base for Istio spec types: camelCase field names as Istio writes them, unknown fields refused.

    `extra="forbid"` is what keeps us honest: a field we do not implement is an error naming it,
    never a silent no-op.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ObjectMeta(BaseModel):
    # Server-set fields from `kubectl get -o yaml` output are accepted and dropped, so a
    # round-tripped file applies unchanged -- except resourceVersion, which (as in Kubernetes)
    # says which version the writer read: the store refuses the write (409) if it is stale.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(default="default", min_length=1, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = Field(default=None, alias="resourceVersion", exclude=True)

    @field_validator("resource_version", mode="before")
    @classmethod
    def _resource_version(cls, v: object) -> object:
        if v is not None and not str(v).isdigit():
            raise ValueError("must be the resourceVersion `lattice get` printed (digits), or left out")
        return None if v is None else str(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1123_SUBDOMAIN.match(v):
            raise ValueError("must be lowercase letters, digits, '-' and '.', starting and ending alphanumeric")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not DNS1123_LABEL.match(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric")
        return v
