"""Plug-ins register; the core finds them by name (mergefile.plugins, mergefile.plan.kinds)."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

from mergefile import plugins
from mergefile.errors import ConfigError
from mergefile.methods.base import BaseRule, EmbedPolicy, Method
from mergefile.methods.registry import get_method
from mergefile.plan import kinds
from mergefile.plan.planner import plan_targets
from mergefile.syntax.parser import parse_text


def test_builtin_plugins_register_their_kinds_generators_and_transforms():
    assert kinds.kind("lora").method.name == "lora:extract"
    assert kinds.kind("moe") is not None and kinds.kind("linear") is None
    assert "evolve" in kinds.generators()
    assert callable(kinds.on_load("lora"))
    assert get_method("lora:extract") is kinds.kind("lora").method


def test_a_hidden_method_needs_a_colon():
    with pytest.raises(ValueError, match="needs a ':'"):
        from mergefile.methods.registry import register_hidden

        register_hidden(
            Method(
                name="plain",
                version=1,
                reference="https://x",
                params=(),
                merge=None,
                base=BaseRule.IGNORED,
                embed=EmbedPolicy.EXACT,
            )
        )


class _EchoKind:
    """A third-party kind: planning says it was reached, so the test sees the dispatch."""

    name = "echo"
    method = Method(
        name="echo:noop",
        version=1,
        reference="https://example.org",
        params=(),
        merge=None,
        base=BaseRule.IGNORED,
        embed=EmbedPolicy.EXACT,
    )

    def plan(self, planner, target):
        raise ConfigError(f"planned by the echo kind: {target.name}", target.loc)


def test_an_entry_point_plugin_plans_its_kind_without_a_core_change(monkeypatch):
    """A package's ``mergebuild.plugins`` entry point is imported once; its kind then plans
    targets of its name and its hidden method resolves, with no line of the core changed."""
    from mergefile.methods import registry

    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))  # the test's kind leaves with the test
    monkeypatch.setattr(registry, "_HIDDEN", dict(registry._HIDDEN))
    monkeypatch.setitem(sys.modules, "mergebuild_echo_plugin", types.ModuleType("mergebuild_echo_plugin"))
    registered = []

    def fake_import(name):  # importing the plug-in's module registers its kind, as a real one does
        if name == "mergebuild_echo_plugin":
            registered.append(kinds.register_kind(_EchoKind()))
        return __import__(name)

    monkeypatch.setattr(plugins.importlib, "import_module", fake_import)
    monkeypatch.setattr(
        "importlib.metadata.entry_points",
        lambda group=None: (
            [EntryPoint("echo", "mergebuild_echo_plugin", plugins.GROUP)] if group == plugins.GROUP else []
        ),
    )
    monkeypatch.setattr(plugins, "_loaded", False)
    assert kinds.kind("echo") is not None and len(registered) == 1
    assert get_method("echo:noop").name == "echo:noop"
    mf = parse_text('model a = "./a"\nout/x: echo(a)\n', "Mergefile")
    with pytest.raises(ConfigError, match="planned by the echo kind: out/x"):
        plan_targets(mf, ["out/x"])
    kinds.kind("echo")
    assert len(registered) == 1  # loaded once per process
