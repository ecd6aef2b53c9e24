"""TF Serving's configuration messages that the ``tensorflow-serving-api`` package does
not ship, built from their fields so their text format parses exactly as TF Serving's
does: ``MonitoringConfig`` (``--monitoring_config_file``) and ``BatchingParameters``
(``--batching_parameters_file``)."""

from __future__ import annotations

import functools

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

_BOOL, _STRING, _INT64, _MESSAGE = 8, 9, 3, 11
_OPTIONAL, _REPEATED = 1, 3
_INT64_VALUE, _STRING_VALUE = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    file = descriptor_pb2.FileDescriptorProto(
        name="gpulab/serving/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers_pb2.DESCRIPTOR.name],
    )

    def message(name: str, *fields: tuple) -> None:
        m = file.message_type.add(name=name)
        for number, (field, kind, label, *type_name) in enumerate(fields, 1):
            added = m.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name[0]

    # monitoring_config.proto
    message("PrometheusConfig", ("enable", _BOOL, _OPTIONAL), ("path", _STRING, _OPTIONAL))
    message(
        "MonitoringConfig",
        ("prometheus_config", _MESSAGE, _OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
    )
    # session_bundle_config.proto's BatchingParameters (the fields this server honours,
    # and those it accepts and says it ignores)
    message(
        "BatchingParameters",
        ("max_batch_size", _MESSAGE, _OPTIONAL, _INT64_VALUE),
        ("batch_timeout_micros", _MESSAGE, _OPTIONAL, _INT64_VALUE),
        ("max_enqueued_batches", _MESSAGE, _OPTIONAL, _INT64_VALUE),
        ("num_batch_threads", _MESSAGE, _OPTIONAL, _INT64_VALUE),
        ("thread_pool_name", _MESSAGE, _OPTIONAL, _STRING_VALUE),
        ("allowed_batch_sizes", _INT64, _REPEATED),
        ("pad_variable_length_inputs", _BOOL, _OPTIONAL),
        ("enable_large_batch_splitting", _MESSAGE, _OPTIONAL, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", _MESSAGE, _OPTIONAL, _INT64_VALUE),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return pool


def message_class(name: str):
    """The message class of ``tensorflow.serving.<name>``."""
    return message_factory.GetMessageClass(
        _pool().FindMessageTypeByName(f"tensorflow.serving.{name}")
    )


def parse(name: str, text: str):
    """A ``tensorflow.serving.<name>`` message read from its protobuf text;
    ``text_format.ParseError`` for text that is not one."""
    message = message_class(name)()
    text_format.Parse(text, message)
    return message
