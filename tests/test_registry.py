import logging
import textwrap

import pytest
from plugin_utils import on_path, write_dist_info

from pixelgen.registry import Registry, plugin_errors, registries


def test_register_build_list_and_overrides():
    reg = Registry("widget")

    @reg.register("small", gated=True)
    def small(width=2, depth=1):
        """A small widget."""
        return {"width": width, "depth": depth}

    reg.register("large")(lambda width=8: {"width": width})
    assert reg.build("small") == {"width": 2, "depth": 1}
    assert reg.build("small", depth=5) == {"width": 2, "depth": 5}
    assert reg.list() == ["large", "small"]
    assert reg.list("s*") == ["small"]
    assert reg.get("small").metadata == {"gated": True}
    assert reg.get("small").doc == "A small widget."
    assert "small" in reg and "tiny" not in reg


def test_bare_decorator_uses_function_name():
    reg = Registry("widget")

    @reg.register
    def my_part():
        return 1

    assert reg.build("my_part") == 1


def test_unknown_name_suggests_close_matches():
    reg = Registry("widget")
    reg.register("jit_b_16")(lambda: 0)
    reg.register("jit_l_16")(lambda: 0)
    with pytest.raises(KeyError, match="did you mean 'jit_b_16'"):
        reg.build("jit_b16")
    with pytest.raises(KeyError, match="registered: jit_b_16, jit_l_16"):
        reg.build("zzz")


def test_duplicate_name_needs_override():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", override=True)(lambda: 3)
    assert reg.build("a") == 3


def test_registries_expose_kinds():
    assert {"backbone", "sampler", "loss", "encoder", "conditioner", "dataset"} <= set(registries.kinds())
    with pytest.raises(AttributeError, match="No registry of kind 'bogus'"):
        _ = registries.bogus


def test_entry_point_plugins_load_and_broken_one_is_reported(tmp_path, caplog):
    pkg = tmp_path / "good_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        import pixelgen

        @pixelgen.hookimpl
        def pixelgen_register(registries):
            registries.sampler.register("test_good_sampler")(lambda **kw: ("good", kw))
    """)
    )
    bad = tmp_path / "bad_plugin_pkg"
    bad.mkdir()
    (bad / "__init__.py").write_text("raise ImportError('this plugin is deliberately broken')\n")
    write_dist_info(tmp_path, "good-plugin", {"good": "good_plugin_pkg"})
    write_dist_info(tmp_path, "bad-plugin", {"broken": "bad_plugin_pkg"})
    with (
        caplog.at_level(logging.WARNING, logger="pixelgen.registry"),
        on_path(tmp_path, modules=("good_plugin_pkg", "bad_plugin_pkg")),
    ):
        assert registries.sampler.build("test_good_sampler", a=1) == ("good", {"a": 1})
        assert registries.sampler.get("test_good_sampler").source == "plugin:good"
        errs = plugin_errors()
        assert "broken" in errs and "deliberately broken" in errs["broken"]
        assert "good" not in errs
        assert any("broken" in r.getMessage() for r in caplog.records)
    assert "test_good_sampler" not in registries.sampler


def test_list_command_prints_parts_and_refuses_unknown_kinds(capsys):
    from pixelgen.cli import main

    assert main(["list", "backbone", "pixelgen_*"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("backbone:\n") and "pixelgen_xl_16" in out and "jit_b_16" not in out
    with pytest.raises(SystemExit) as exit_info:
        main(["list", "backbones"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'backbones'" in capsys.readouterr().err
