"""YAML limits: alias bombs, oversized files, deep nesting and unsafe tags are refused quickly
with one ``file:line:`` sentence; ordinary anchors and aliases keep working."""

from __future__ import annotations

import time

import pytest

from livegen import yaml_safe
from livegen.settings import LineDict, SettingsError, load_settings, load_yaml

LETTERS = "abcdefgh"


def alias_bomb(levels: int = 8) -> str:
    """The reported bomb: 10 leaves at the first anchor, each further level ten aliases of the one
    before: 10^8 leaves under ``params`` at ``h``."""
    lines = ["params:", '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip(LETTERS[:levels - 1], LETTERS[1:levels], strict=True):
        lines.append(f"  {cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_the_alias_bomb_is_refused_in_milliseconds_with_a_located_sentence():
    text = alias_bomb()
    assert len(text) < 1000  # a few hundred bytes that would expand to 10^8 strings
    t0 = time.perf_counter()
    data, errors = load_yaml(text, "bomb.yaml")
    elapsed = time.perf_counter() - t0
    assert data is None
    # level f (line 7) is the first to expand past the value budget: 10^6 strings
    assert errors == ["bomb.yaml:7: this YAML expands through its aliases (*name) to more than 200,000 "
                      "values; livegen refuses it (an alias bomb?)."]
    assert elapsed < 0.1


def test_the_alias_bomb_in_a_settings_file(tmp_path):
    p = tmp_path / "livegen.yaml"
    p.write_text(alias_bomb())
    t0 = time.perf_counter()
    with pytest.raises(SettingsError) as info:
        load_settings(p)
    assert time.perf_counter() - t0 < 0.1
    assert info.value.errors == [f"{p}:7: this YAML expands through its aliases (*name) to more than "
                                 "200,000 values; livegen refuses it (an alias bomb?)."]


def test_too_many_aliases_are_refused_at_the_first_one_over_the_budget():
    items = "\n".join(f"  - *x  # {i}" for i in range(yaml_safe.MAX_ALIASES + 1))
    data, errors = load_yaml(f"base: &x 1\nlist:\n{items}\n", "many.yaml")
    assert data is None
    assert errors == [f"many.yaml:{yaml_safe.MAX_ALIASES + 3}: this YAML uses more than "
                      f"{yaml_safe.MAX_ALIASES} aliases (*name); livegen refuses it so that it cannot "
                      "expand without bound."]


def test_a_recursive_alias_is_refused():
    data, errors = load_yaml("loop: &a [1, *a]\n", "loop.yaml")
    assert data is None
    assert errors == ["loop.yaml:1: the alias *a refers to the list or mapping it is inside; livegen "
                      "refuses recursive YAML."]


def test_deep_nesting_is_refused_instead_of_exhausting_the_recursion_limit():
    text = "x: " + "[" * 5000 + "]" * 5000 + "\n"
    data, errors = load_yaml(text, "deep.yaml")
    assert data is None
    assert errors == ["deep.yaml:1: this YAML nests lists and mappings more than 100 levels deep."]
    ok, errors = load_yaml("x: " + "[" * 50 + "1" + "]" * 50 + "\n", "deep.yaml")
    assert errors == [] and ok["x"] is not None


def test_a_file_over_the_size_cap_is_refused(tmp_path):
    text = "# padding\n" * (yaml_safe.MAX_BYTES // 10 + 1) + "osc: {port: 9000}\n"
    data, errors = load_yaml(text, "big.yaml")
    assert data is None
    assert errors == ["big.yaml:0: this file is 1,048,598 bytes, more than the 1 MiB livegen reads from "
                      "a settings or mapping file."]
    p = tmp_path / "livegen.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError, match=r"livegen\.yaml:0: this file is 1,048,598 bytes, more than the 1 MiB"):
        load_settings(p)
    # exactly at the cap is fine
    fits = "#" * (yaml_safe.MAX_BYTES - 1) + "\n"
    assert load_yaml(fits, "fits.yaml") == (None, [])


def test_read_text_capped_reads_no_more_than_the_cap(tmp_path):
    p = tmp_path / "huge.yaml"
    p.write_bytes(b"a: 1\n" * 1_000_000)  # 5 MB
    with pytest.raises(yaml_safe.YamlLimitError) as info:
        yaml_safe.read_text_capped(p)
    assert info.value.located(str(p)) == (f"{p}:0: this file is 5,000,000 bytes, more than the 1 MiB "
                                          "livegen reads from a settings or mapping file.")
    small = tmp_path / "small.yaml"
    small.write_text("a: 1\n")
    assert yaml_safe.read_text_capped(small) == "a: 1\n"


def test_ordinary_anchors_aliases_and_merge_keys_still_work_with_line_numbers():
    text = (
        "defaults: &pad\n"
        "  action: generate\n"
        "  seconds: 4\n"
        "midi:\n"
        + "".join(f"  - <<: *pad\n    note: {36 + i}\n" for i in range(128))
    )
    data, errors = load_yaml(text, "pads.yaml")
    assert errors == []
    assert len(data["midi"]) == 128
    assert data["midi"][5] == {"action": "generate", "seconds": 4, "note": 41}
    assert isinstance(data, LineDict) and data.line_of("midi") == 4
    assert data["midi"].line_of(1) == 7


def test_unsafe_tags_stay_refused():
    data, errors = load_yaml("x: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    assert data is None
    assert len(errors) == 1 and errors[0].startswith("evil.yaml:1: this is not valid YAML (")
    with pytest.raises(Exception, match="could not determine a constructor"):
        yaml_safe.safe_load("x: !!python/object:os.system {}\n")


def test_safe_load_applies_the_limits():
    assert yaml_safe.safe_load("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(yaml_safe.YamlLimitError) as info:
        yaml_safe.safe_load(alias_bomb(), "bomb.yaml")
    assert info.value.line == 7
