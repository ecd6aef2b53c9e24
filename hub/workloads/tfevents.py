"""Scalars from TensorBoard event files, read as Katib's TensorFlowEvent collector reads
them, with Python's standard library alone (no TensorFlow, no protobuf package).

An event file (``events.out.tfevents.*``) is a TFRecord file: records framed as
``length (uint64) | masked CRC32C of the length | data | masked CRC32C of the data``,
each an ``Event`` protocol buffer. A scalar is a ``Summary.Value`` of an event, either
TF1's ``simple_value`` or TF2's ``tf.summary.scalar``: a one-element ``TensorProto``
whose tag's metadata (written with its first value) names the plugin ``scalars``. A file
cut short (a run killed mid-write) counts up to its last whole record.

A tag is known by its folder under the one read, as TensorBoard shows it: ``loss`` in
``logs/validation`` is ``validation/loss`` when ``logs`` is read. A wanted name is that
full tag, or else its last path parts when only one tag ends so (``loss`` for
``validation/loss`` when no ``train/loss`` is there). Of each tag the value of the
highest step wins (the last written, on a tie).

This file runs in a job replica's own shell, as the replica's user, after the command
ended: ``python3 -c "<this file>"`` (see ``job_run``). ``main`` then reads the names in
``$GPULAB_METRICS_NAMES`` from the event files under ``$GPULAB_METRICS_EVENTS`` (relative
to the working folder; ``$VARIABLES`` in it are the replica's, ``$GPULAB_JOB`` say)
written since ``$GPULAB_METRICS_SINCE`` (when the job started: earlier runs' files in the
same folder do not count) and merges them into ``$GPULAB_METRICS_FILE``, which the hub
reads. It needs Python 3.7 or newer and nothing else, as images differ.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys

EVENT_FILE_PREFIX = "events.out.tfevents."
MAX_RECORD = 64 << 20
"""A longer record (a graph, say) is skipped unread: no scalar event is that big."""

# protocol buffer wire types
VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5

# TensorProto dtypes (tensorflow/core/framework/types.proto): struct format, value field
DTYPES = {
    1: ("f", 5),  # DT_FLOAT: float_val
    2: ("d", 6),  # DT_DOUBLE: double_val
    3: ("i", 7),  # DT_INT32: int_val
    4: ("B", 7),  # DT_UINT8
    5: ("h", 7),  # DT_INT16
    6: ("b", 7),  # DT_INT8
    9: ("q", 10),  # DT_INT64: int64_val
    10: ("?", 11),  # DT_BOOL: bool_val
    14: ("bfloat16", 13),  # DT_BFLOAT16: half_val, as bits
    17: ("H", 7),  # DT_UINT16
    19: ("e", 13),  # DT_HALF: half_val, as bits
    22: ("I", 16),  # DT_UINT32: uint32_val
    23: ("Q", 17),  # DT_UINT64: uint64_val
}


def _crc_table() -> list:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses it."""
    crc = 0xFFFFFFFF
    table = CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(f):
    """(data, whether its checksum holds) of each whole record of the TFRecord file ``f``
    (a binary file); ends at the first record cut short or with a bad length. The data's
    checksum is computed only when asked for, as most records are not read further."""
    while True:
        header = f.read(12)
        if len(header) < 12:
            return
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
            return  # not a record boundary: nothing after it can be trusted
        if length > MAX_RECORD:
            here = f.tell()
            f.seek(0, os.SEEK_END)
            if f.tell() < here + length + 4:
                return
            f.seek(here + length + 4)
            continue
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            return
        (stored,) = struct.unpack("<I", footer)
        yield data, lambda data=data, stored=stored: masked_crc(data) == stored


def _varint(buf: bytes, pos: int):
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a varint past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes):
    """(field number, wire type, value) of each field of a protocol buffer message: an
    int for a varint, bytes for the others; ValueError if it is not one."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == BYTES:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(buf):
            raise ValueError("a field past the end")
        yield number, wire, value


def _signed(value: int) -> int:
    """A varint read as a two's complement int64."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _numbers(wire: int, value, kind: str) -> list:
    """The values of a repeated numeric field, packed (bytes) or one at a time."""
    if kind in ("f", "d"):
        size = 4 if kind == "f" else 8
        return list(
            struct.unpack(f"<{len(value) // size}{kind}", value[: len(value) // size * size])
        )
    if wire == BYTES:
        numbers, pos = [], 0
        while pos < len(value):
            number, pos = _varint(value, pos)
            numbers.append(number)
        return numbers
    return [value]


def _half(bits: int, kind: str) -> float:
    if kind == "bfloat16":
        return struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]
    return struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]


def tensor_scalar(tensor: bytes):
    """The number a one-element numeric TensorProto holds; None for any other tensor."""
    dtype, content, dims, listed = 0, None, [], {}
    for number, wire, value in fields(tensor):
        if number == 1 and wire == VARINT:
            dtype = value
        elif number == 2 and wire == BYTES:  # TensorShapeProto: dim {size}
            for n, w, dim in fields(value):
                if n == 2 and w == BYTES:
                    dims.append(next((v for k, _, v in fields(dim) if k == 1), 0))
        elif number == 4 and wire == BYTES:
            content = value
        else:
            listed.setdefault(number, []).append((wire, value))
    if dtype not in DTYPES or any(d != 1 for d in dims):
        return None
    kind, field = DTYPES[dtype]
    if content:
        if kind in ("bfloat16", "e"):
            if len(content) != 2:
                return None
            return short(_half(struct.unpack("<H", content)[0], kind))
        if len(content) != struct.calcsize(f"<{kind}"):
            return None
        value = float(struct.unpack(f"<{kind}", content)[0])
        return short(value) if kind == "f" else value
    values = []
    for wire, value in listed.get(field, ()):
        values += _numbers(wire, value, kind if kind in ("f", "d") else "")
    if len(values) != 1:
        return None
    value = values[0]
    if kind in ("bfloat16", "e"):
        return short(_half(value, kind))
    if kind in ("i", "h", "b", "q"):
        return float(_signed(value))
    return short(value) if kind == "f" else float(value)


def short(value: float) -> float:
    """A float32 as the shortest decimal that is the same float32 (0.9, not
    0.8999999762), as TensorBoard shows it."""
    if not math.isfinite(value):
        return value
    exact = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack("<f", candidate) == exact:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return value


def _plugin_name(metadata: bytes):
    """The plugin a SummaryMetadata names; None if it names none."""
    for number, wire, plugin_data in fields(metadata):
        if number == 1 and wire == BYTES:
            for n, w, name in fields(plugin_data):
                if n == 1 and w == BYTES:
                    return name.decode("utf-8", "replace")
    return None


def event_scalars(event: bytes, plugins: dict):
    """(step, wall time, [(tag, value)]) of an Event's scalar summary values; ``plugins``
    (tag: plugin name) learns each tag's plugin from the metadata written with its first
    value. None for an event without a summary."""
    step, wall_time, summary = 0, 0.0, None
    for number, wire, value in fields(event):
        if number == 1 and wire == FIXED64:
            wall_time = struct.unpack("<d", value)[0]
        elif number == 2 and wire == VARINT:
            step = _signed(value)
        elif number == 5 and wire == BYTES:
            summary = value
    if summary is None:
        return None
    scalars = []
    for number, wire, value in fields(summary):
        if number != 1 or wire != BYTES:
            continue
        tag, simple, tensor, plugin = None, None, None, None
        for n, w, v in fields(value):
            if n == 1 and w == BYTES:
                tag = v.decode("utf-8", "replace")
            elif n == 2 and w == FIXED32:
                simple = struct.unpack("<f", v)[0]
            elif n == 8 and w == BYTES:
                tensor = v
            elif n == 9 and w == BYTES:  # SummaryMetadata.plugin_data.plugin_name
                plugin = _plugin_name(v)
        if tag is None:
            continue
        if plugin is not None:
            plugins[tag] = plugin
        if simple is not None:
            scalars.append((tag, short(simple)))
        elif tensor is not None and plugins.get(tag, "scalars") == "scalars":
            number = tensor_scalar(tensor)
            if number is not None:
                scalars.append((tag, number))
    return step, wall_time, scalars


def event_files(folder: str, since: float = 0.0) -> list:
    """The event files under ``folder`` (at any depth, not through links to folders)
    last written at ``since`` (seconds since the epoch) or later, each as (path, its
    folder relative to ``folder``), in the order they were written."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        run = os.path.relpath(root, folder).replace(os.sep, "/")
        for name in sorted(files):
            if not name.startswith(EVENT_FILE_PREFIX):
                continue
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_mtime >= since:
                found.append((path, "" if run == "." else run))
    return found


def latest_scalars(folder: str, since: float = 0.0):
    """Every scalar tag under ``folder`` (as TensorBoard names it, ``run/tag``) with
    (step, value) of its highest step, from the files written since ``since``; and how
    many event files there were."""
    files = event_files(folder, since)
    best = {}
    order = 0
    for path, run in files:
        plugins = {}
        try:
            f = open(path, "rb")
        except OSError:
            continue
        with f:
            try:
                for data, intact in records(f):
                    try:
                        found = event_scalars(data, plugins)
                    except (ValueError, struct.error, IndexError, OverflowError):
                        continue  # not an Event: what a TensorBoard also skips
                    if not found or not found[2] or not intact():
                        continue
                    step, wall_time, scalars = found
                    for tag, value in scalars:
                        order += 1
                        name = f"{run}/{tag}" if run else tag
                        key = (step, wall_time, order)
                        if name not in best or key >= best[name][0]:
                            best[name] = (key, value)
            except OSError:
                continue
    return {name: (key[0], value) for name, (key, value) in best.items()}, len(files)


def match(names, tags) -> tuple:
    """({name: tag} of each wanted name found, {name: [tags]} of those that end more than
    one tag): a name is a tag itself, or the last path parts of exactly one."""
    chosen, ambiguous = {}, {}
    for name in names:
        if name in tags:
            chosen[name] = name
            continue
        ends = sorted(t for t in tags if t.endswith("/" + name))
        if len(ends) == 1:
            chosen[name] = ends[0]
        elif ends:
            ambiguous[name] = ends
    return chosen, ambiguous


def read_scalars(folder: str, names, since: float = 0.0) -> tuple:
    """({name: value} of the wanted ``names`` found in the event files under ``folder``
    written since ``since``, lines that say what was read and what was not)."""
    tags, count = latest_scalars(folder, since)
    if not count:
        return {}, [f"no event files under {folder} written by this run"]
    chosen, ambiguous = match(names, tags)
    values, read = {}, []
    notes = []
    for name in names:
        if name in chosen:
            step, value = tags[chosen[name]]
            shown = name if chosen[name] == name else f"{name} ({chosen[name]})"
            if math.isfinite(value):
                values[name] = value
                read.append(f"{shown} at step {step}")
            else:
                notes.append(f"{shown} is {value} at step {step}: not reported")
        elif name in ambiguous:
            notes.append(f"{name} is the end of {', '.join(ambiguous[name])}: name one of them")
        else:
            notes.append(f"no scalar named {name}")
    files = f"{count} event file{'s' if count != 1 else ''}"
    head = f"read {', '.join(read) or 'nothing'} from {files} under {folder}"
    return values, [head, *notes]


def merge_into(path: str, values: dict) -> None:
    """Add ``values`` to the JSON object in the file ``path`` (made if missing; replaced
    if it held no object), replacing the file whole."""
    data = {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        pass
    if not isinstance(data, dict):
        data = {}
    data.update(values)
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        json.dump(data, f)
    os.replace(partial, path)


def main() -> int:
    folder = os.path.expandvars(os.environ.get("GPULAB_METRICS_EVENTS", ""))
    names = os.environ.get("GPULAB_METRICS_NAMES", "").split()
    target = os.environ.get("GPULAB_METRICS_FILE", "")
    try:
        since = float(os.environ.get("GPULAB_METRICS_SINCE", "0"))
    except ValueError:
        since = 0.0
    if not folder or not names or not target:
        return 0
    values, lines = read_scalars(folder, names, since)
    if values:
        try:
            merge_into(target, values)
        except OSError as e:
            lines.append(f"could not write {target}: {e.strerror or e}")
    for line in lines:
        print(f"==> gpulab: TensorBoard metrics: {line}")
    return 0


def source() -> str:
    """This module's source, as a replica's shell runs it."""
    with open(__file__) as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main())
