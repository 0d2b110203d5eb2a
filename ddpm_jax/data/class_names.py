"""The class names of a run (``<workdir>/labels.json``) and labels given by name or number."""

from __future__ import annotations

from collections.abc import Sequence
import json
import os

from etils import epath

LABELS_FILE = "labels.json"


def write_class_names(workdir: os.PathLike[str] | str, names: Sequence[str]) -> None:
    """Writes ``{"0": name, "1": name, ...}`` to ``<workdir>/labels.json``."""
    (epath.Path(workdir) / LABELS_FILE).write_text(
        json.dumps({str(i): name for i, name in enumerate(names)}, indent=1))


def read_class_names(workdir: os.PathLike[str] | str) -> list[str] | None:
    """The names written by ``write_class_names``, or None when the run has none."""
    path = epath.Path(workdir) / LABELS_FILE
    if not path.exists():
        return None
    mapping = json.loads(path.read_text())
    return [mapping[str(i)] for i in range(len(mapping))]


def parse_labels(values: Sequence[str], class_names: Sequence[str] | None) -> list[int]:
    """Labels given as class names or numbers: a value that is one of the run's class names is
    that class (so with folders named 0..10, '2' is the folder '2' whatever its index), any other
    integer is a label index.

    Args:
        values: each a class name ('cat') or an integer ('3').
        class_names: the run's names (``read_class_names``), or None.

    Returns:
        The integer labels, in order.
    """
    labels = []
    for value in values:
        if class_names is not None and value in class_names:
            labels.append(list(class_names).index(value))
        elif value.lstrip("-").isdigit():
            labels.append(int(value))
        else:
            known = ("; the run's classes (labels.json) are " + ", ".join(
                f"{i}={name}" for i, name in enumerate(class_names))) if class_names else ""
            raise ValueError(f"unknown label {value!r}: expected an integer class label{known}")
    return labels
