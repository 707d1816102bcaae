"""Where a mergekit model string's relative path points: mergekit's rule, one fallback.

mergekit opens ``./models/x`` relative to the working directory it runs in, whatever folder
the YAML sits in; configs are commonly kept in a ``configs/`` folder of the project that holds
``models/``. So an :class:`AutoRef` (a model string read from mergekit YAML: ``--config``,
multi-document, mergekit-moe and mergekit-evolve files) carries the working directory as its
``base_dir``, and its ``loc.file`` is the YAML file. The rule:

* the path exists relative to the working directory: that folder (mergekit's answer);
* it exists only relative to the YAML's folder (an older mergebuild rule, and what a person
  who keeps models beside the config means): that folder, with a one-line note;
* both exist and are different folders: an error naming both -- guessing could merge the
  wrong weights;
* neither: not a local folder (a hub id, or an error naming the working-directory path).

Mergefiles keep their own rule (paths relative to the Mergefile, ``PathRef``); a YAML included
from a Mergefile takes the Mergefile's folder as its working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergefile.errors import ConfigError
from mergefile.syntax.ast import AutoRef

__all__ = ["Located", "local_folder", "yaml_folder"]


class Located:
    """A resolved local folder and, when it was found by the fallback, the note to show."""

    def __init__(self, path: Path, note: str | None = None):
        self.path, self.note = path, note


def yaml_folder(ref: AutoRef) -> str | None:
    """The folder of the YAML file the reference was read from, when it is a real file."""
    loc = ref.loc
    if loc is None or loc.file in ("", "<string>") or not loc.file.lower().endswith((".yml", ".yaml")):
        return None
    return os.path.dirname(os.path.abspath(loc.file))


def local_folder(ref: AutoRef, name: str | None = None) -> Located | None:
    """The local folder ``ref`` (or its path part ``name``) names, or None when there is none.

    A ``@revision`` always means the hub, so callers pass only revision-free names.

    Raises:
        ConfigError: the path exists relative to both the working directory and the YAML's
            folder, and they are different folders.
    """
    name = ref.text if name is None else name
    primary = Path(ref.base_dir) / name
    other_dir = yaml_folder(ref)
    if os.path.isabs(name) or other_dir is None or os.path.realpath(other_dir) == os.path.realpath(ref.base_dir):
        return Located(primary) if primary.is_dir() else None
    other = Path(other_dir) / name
    here, there = primary.is_dir(), other.is_dir()
    if here and there and os.path.realpath(primary) != os.path.realpath(other):
        raise ConfigError(
            f"model '{name}' names two different folders: {primary} (from the working directory,"
            f" as mergekit reads it) and {other} (from the YAML's folder)",
            ref.loc,
            "write the path you mean from the working directory, or an absolute path",
        )
    if here:
        return Located(primary)
    if there:
        return Located(
            other,
            f"model '{name}' is not in the working directory ({ref.base_dir});"
            f" using {other}, relative to the YAML's folder (mergekit would not find it)",
        )
    return None
