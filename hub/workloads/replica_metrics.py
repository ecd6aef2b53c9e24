"""The Prometheus metrics of a model's replicas as one exposition.

Each replica answers TF Serving's metrics (``:tensorflow:serving:request_count``, ...) in
the Prometheus text format on its REST API. The hub asks every replica and answers them
together, each sample labelled with its replica (``replica="0"``), each metric family's
``# HELP`` and ``# TYPE`` once with the samples of every replica under it (as the text
format wants), and a comment line naming each replica that did not answer. A replica
runs as its owner, so what it sends is not trusted: only lines that read as samples or
as a family's HELP and TYPE are passed on, and a sample that already has a ``replica``
label is left out.
"""

from __future__ import annotations

import re

REPLICA_LABEL = "replica"
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(\{{.*\}})?([ \t]+\S+(?:[ \t]+-?\d+)?)")
_META = re.compile(
    rf"#[ \t]+(HELP)[ \t]+({_NAME})(?:[ \t].*)?"
    rf"|#[ \t]+(TYPE)[ \t]+({_NAME})[ \t]+(?:counter|gauge|histogram|summary|untyped)"
)
_HAS_REPLICA = re.compile(rf"(?:^|,)\s*{REPLICA_LABEL}\s*=")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info", "_gcount", "_gsum")
"""A family's samples beside its own name: a histogram's buckets, sum and count, ..."""


class _Family:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}
        """HELP and TYPE lines by kind: the first one of each."""
        self.samples: list[str] = []


def merged(answers: dict[int, str], missing: dict[int, str]) -> str:
    """One exposition of replicas' ``answers`` (replica index -> Prometheus text), with
    a comment line for each of ``missing`` (replica index -> why it did not answer)."""
    lines = [
        f"# replica {index} did not answer: {' '.join(str(why).split())}"
        for index, why in sorted(missing.items())
    ]
    families: dict[str, _Family] = {}
    for index in sorted(answers):
        for name, family in _families(answers[index]).items():
            into = families.setdefault(name, _Family())
            for kind, line in family.meta.items():
                into.meta.setdefault(kind, line)
            into.samples += [s for s in (labelled(s, index) for s in family.samples) if s]
    for family in families.values():
        lines += [family.meta[k] for k in ("HELP", "TYPE") if k in family.meta]
        lines += family.samples
    return "\n".join(lines) + "\n"


def labelled(sample: str, index: int) -> str | None:
    """A sample line with ``replica="<index>"`` first among its labels; None for one that
    is no sample, or has a replica label of its own."""
    match = _SAMPLE.fullmatch(sample)
    if match is None:
        return None
    name, labels, rest = match.groups()
    inner = (labels or "{}")[1:-1].strip()
    if _HAS_REPLICA.search(inner):
        return None
    pairs = f'{REPLICA_LABEL}="{index}"' + (f",{inner}" if inner else "")
    return f"{name}{{{pairs}}}{rest}"


def _families(text: str) -> dict[str, _Family]:
    """A replica's metric families in the order they come: their HELP and TYPE lines and
    their samples; other comments and lines that are no sample are left out."""
    families: dict[str, _Family] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            meta = _META.fullmatch(line)
            if meta is not None:
                kind, current = (g for g in meta.groups() if g)
                families.setdefault(current, _Family()).meta.setdefault(kind, line)
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            continue
        name = match.group(1)
        ours = current and name.startswith(current) and name[len(current) :] in ("", *_SUFFIXES)
        families.setdefault(current if ours else name, _Family()).samples.append(line)
    return families
