"""Plugin discovery on a shared machine: every plugin and every replaced built-in is logged, plugins can be
turned off or allow-listed, and a broken plugin is named while the others load."""

from __future__ import annotations

import logging
import textwrap

import pytest
from plugin_utils import on_path, write_dist_info

from pixelgen.registry import loaded_plugins, plugin_errors, registries

MODULES = ("toy_override_pkg", "toy_extra_pkg", "toy_broken_pkg")


@pytest.fixture()
def plugins(tmp_path):
    (tmp_path / "toy_override_pkg").mkdir()
    (tmp_path / "toy_override_pkg" / "__init__.py").write_text(
        textwrap.dedent("""
        import pixelgen

        @pixelgen.hookimpl
        def pixelgen_register(registries):
            registries.sampler.register("euler", override=True)(lambda **kw: "replaced euler")
    """)
    )
    (tmp_path / "toy_extra_pkg").mkdir()
    (tmp_path / "toy_extra_pkg" / "__init__.py").write_text(
        textwrap.dedent("""
        import pixelgen

        @pixelgen.hookimpl
        def pixelgen_register(registries):
            registries.sampler.register("toy_extra_sampler")(lambda **kw: "extra")
    """)
    )
    (tmp_path / "toy_broken_pkg").mkdir()
    (tmp_path / "toy_broken_pkg" / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    write_dist_info(tmp_path, "toy-override", {"toy_override": "toy_override_pkg"})
    write_dist_info(tmp_path, "toy-extra", {"toy_extra": "toy_extra_pkg"})
    write_dist_info(tmp_path, "toy-broken", {"toy_broken": "toy_broken_pkg"})
    return tmp_path


def test_loaded_plugins_and_replaced_builtins_are_logged_once(plugins, caplog, monkeypatch):
    monkeypatch.delenv("PIXELGEN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("PIXELGEN_PLUGINS", raising=False)
    builtin = registries.sampler.get("euler").builder
    with caplog.at_level(logging.INFO, logger="pixelgen.registry"), on_path(plugins, modules=MODULES):
        assert registries.sampler.build("euler") == "replaced euler"
        assert registries.sampler.build("toy_extra_sampler") == "extra"
        registries.loss.list(), registries.backbone.list()  # later lookups do not log again
        messages = [r.getMessage() for r in caplog.records]
        assert set(loaded_plugins()) == {"toy_override", "toy_extra"}
        assert "toy_broken" in plugin_errors() and "a_module_that_does_not_exist" in plugin_errors()["toy_broken"]
    replaced = [m for m in messages if "replaces the sampler 'euler'" in m]
    assert len(replaced) == 1 and "plugin:toy_override" in replaced[0]
    assert sum("plugin 'toy_extra' loaded" in m and "sampler 'toy_extra_sampler'" in m for m in messages) == 1
    assert sum("'toy_broken'" in m and "failed to load" in m for m in messages) == 1
    # Forgetting the plugins brings the built-in back.
    assert registries.sampler.get("euler").builder is builtin


def test_disable_switch_loads_no_plugin(plugins, monkeypatch):
    monkeypatch.setenv("PIXELGEN_DISABLE_PLUGINS", "1")
    with on_path(plugins, modules=MODULES):
        assert "toy_extra_sampler" not in registries.sampler
        assert registries.sampler.build("euler") != "replaced euler"
        assert not loaded_plugins() and not plugin_errors()


def test_allow_list_loads_only_the_named_plugins(plugins, monkeypatch):
    monkeypatch.delenv("PIXELGEN_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv("PIXELGEN_PLUGINS", "toy_extra, toy_broken")
    with on_path(plugins, modules=MODULES):
        assert registries.sampler.build("toy_extra_sampler") == "extra"
        assert registries.sampler.build("euler") != "replaced euler"
        assert set(loaded_plugins()) == {"toy_extra"} and set(plugin_errors()) == {"toy_broken"}
