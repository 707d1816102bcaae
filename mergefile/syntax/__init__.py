"""Mergefile syntax: Mergefile text and mergekit YAML -> the recipe AST.

Example:
    >>> from mergefile.syntax import parse_text
    >>> mf = parse_text('model m = "./m"\\nout/x: linear { m weight=1 }')
    >>> mf.targets()["out/x"].sources[0].ref
    Sym(name='m', loc=Loc(file='<string>', line=2, column=17))
"""

from mergefile.syntax.ast import (
    Assign,
    AutoRef,
    HfRef,
    Include,
    Mergefile,
    ModelDecl,
    Module,
    Param,
    PathRef,
    Phony,
    Ref,
    Slice,
    Source,
    Statement,
    Sym,
    Target,
    Value,
)
from mergefile.syntax.parser import parse_mergefile, parse_text
from mergefile.syntax.yaml_import import (
    load_yaml_target,
    load_yaml_targets,
    yaml_text_to_target,
    yaml_text_to_targets,
)

__all__ = [
    "parse_text",
    "parse_mergefile",
    "load_yaml_target",
    "load_yaml_targets",
    "yaml_text_to_target",
    "yaml_text_to_targets",
    "Assign",
    "AutoRef",
    "HfRef",
    "Include",
    "Mergefile",
    "ModelDecl",
    "Module",
    "Param",
    "PathRef",
    "Phony",
    "Ref",
    "Slice",
    "Source",
    "Statement",
    "Sym",
    "Target",
    "Value",
]
