"""OTLP's trace messages (opentelemetry-proto, collector/trace/v1), declared here field for field.

Envoy's OpenTelemetry tracer sends `ExportTraceServiceRequest`s; the agent relays their bytes and
the control plane files the spans. The wire format is what matters, so the messages are built at
import from a descriptor with OTLP's field numbers and names (current OTLP: `scope_spans`), in a
package of our own. Importing the `opentelemetry.proto` modules instead would depend on which of
two wheels that both ship them was installed last (xds-protos carries an older copy, where field 2
of ResourceSpans is still `instrumentation_library_spans`). Fields not declared here (span
events, links) are kept as unknown fields and never read.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "lattice.otlp.v1"
F = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str,
    number: int,
    kind: F.Type.ValueType,
    label: F.Label.ValueType = F.LABEL_OPTIONAL,
    type_name: str = "",
    oneof: int | None = None,
) -> F:
    field = F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _message(
    name: str, *fields: F, enums: tuple[descriptor_pb2.EnumDescriptorProto, ...] = (), oneofs: tuple[str, ...] = ()
) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=name, field=list(fields), enum_type=list(enums))
    message.oneof_decl.extend(descriptor_pb2.OneofDescriptorProto(name=o) for o in oneofs)
    return message


def _enum(name: str, *values: str) -> descriptor_pb2.EnumDescriptorProto:
    return descriptor_pb2.EnumDescriptorProto(
        name=name, value=[descriptor_pb2.EnumValueDescriptorProto(name=v, number=i) for i, v in enumerate(values)]
    )


REPEATED = F.LABEL_REPEATED
_FILE = descriptor_pb2.FileDescriptorProto(
    name="lattice/otlp/v1/trace.proto",
    package=_PACKAGE,
    syntax="proto3",
    message_type=[
        _message(
            "AnyValue",
            _field("string_value", 1, F.TYPE_STRING, oneof=0),
            _field("bool_value", 2, F.TYPE_BOOL, oneof=0),
            _field("int_value", 3, F.TYPE_INT64, oneof=0),
            _field("double_value", 4, F.TYPE_DOUBLE, oneof=0),
            _field("array_value", 5, F.TYPE_MESSAGE, type_name="ArrayValue", oneof=0),
            _field("kvlist_value", 6, F.TYPE_MESSAGE, type_name="KeyValueList", oneof=0),
            _field("bytes_value", 7, F.TYPE_BYTES, oneof=0),
            oneofs=("value",),
        ),
        _message("ArrayValue", _field("values", 1, F.TYPE_MESSAGE, REPEATED, "AnyValue")),
        _message("KeyValueList", _field("values", 1, F.TYPE_MESSAGE, REPEATED, "KeyValue")),
        _message("KeyValue", _field("key", 1, F.TYPE_STRING), _field("value", 2, F.TYPE_MESSAGE, type_name="AnyValue")),
        _message(
            "InstrumentationScope",
            _field("name", 1, F.TYPE_STRING),
            _field("version", 2, F.TYPE_STRING),
            _field("attributes", 3, F.TYPE_MESSAGE, REPEATED, "KeyValue"),
            _field("dropped_attributes_count", 4, F.TYPE_UINT32),
        ),
        _message(
            "Resource",
            _field("attributes", 1, F.TYPE_MESSAGE, REPEATED, "KeyValue"),
            _field("dropped_attributes_count", 2, F.TYPE_UINT32),
        ),
        _message(
            "Status",
            _field("message", 2, F.TYPE_STRING),
            _field("code", 3, F.TYPE_ENUM, type_name="Status.StatusCode"),
            enums=(_enum("StatusCode", "STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"),),
        ),
        _message(
            "Span",
            _field("trace_id", 1, F.TYPE_BYTES),
            _field("span_id", 2, F.TYPE_BYTES),
            _field("trace_state", 3, F.TYPE_STRING),
            _field("parent_span_id", 4, F.TYPE_BYTES),
            _field("name", 5, F.TYPE_STRING),
            _field("kind", 6, F.TYPE_ENUM, type_name="Span.SpanKind"),
            _field("start_time_unix_nano", 7, F.TYPE_FIXED64),
            _field("end_time_unix_nano", 8, F.TYPE_FIXED64),
            _field("attributes", 9, F.TYPE_MESSAGE, REPEATED, "KeyValue"),
            _field("dropped_attributes_count", 10, F.TYPE_UINT32),
            _field("status", 15, F.TYPE_MESSAGE, type_name="Status"),
            _field("flags", 16, F.TYPE_FIXED32),
            enums=(
                _enum(
                    "SpanKind",
                    "SPAN_KIND_UNSPECIFIED",
                    "SPAN_KIND_INTERNAL",
                    "SPAN_KIND_SERVER",
                    "SPAN_KIND_CLIENT",
                    "SPAN_KIND_PRODUCER",
                    "SPAN_KIND_CONSUMER",
                ),
            ),
        ),
        _message(
            "ScopeSpans",
            _field("scope", 1, F.TYPE_MESSAGE, type_name="InstrumentationScope"),
            _field("spans", 2, F.TYPE_MESSAGE, REPEATED, "Span"),
            _field("schema_url", 3, F.TYPE_STRING),
        ),
        _message(
            "ResourceSpans",
            _field("resource", 1, F.TYPE_MESSAGE, type_name="Resource"),
            _field("scope_spans", 2, F.TYPE_MESSAGE, REPEATED, "ScopeSpans"),
            _field("schema_url", 3, F.TYPE_STRING),
        ),
        _message("ExportTraceServiceRequest", _field("resource_spans", 1, F.TYPE_MESSAGE, REPEATED, "ResourceSpans")),
        _message(
            "ExportTracePartialSuccess",
            _field("rejected_spans", 1, F.TYPE_INT64),
            _field("error_message", 2, F.TYPE_STRING),
        ),
        _message(
            "ExportTraceServiceResponse",
            _field("partial_success", 1, F.TYPE_MESSAGE, type_name="ExportTracePartialSuccess"),
        ),
    ],
)
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_FILE)


def _class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


AnyValue = _class("AnyValue")
ArrayValue = _class("ArrayValue")
KeyValueList = _class("KeyValueList")
KeyValue = _class("KeyValue")
InstrumentationScope = _class("InstrumentationScope")
Resource = _class("Resource")
Status = _class("Status")
Span = _class("Span")
ScopeSpans = _class("ScopeSpans")
ResourceSpans = _class("ResourceSpans")
ExportTraceServiceRequest = _class("ExportTraceServiceRequest")
ExportTracePartialSuccess = _class("ExportTracePartialSuccess")
ExportTraceServiceResponse = _class("ExportTraceServiceResponse")
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"  # the gRPC service Envoy calls
