"""Pad prompt edits in mapping files: only the prompt's characters change (comments, layout and
quoting of everything else are kept), and the result reads back as intended."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from livegen.control.web_yaml import EditError, find_bank_file, set_pad_prompt
from livegen.mapping import Mapper, MappingError

ROOT = Path(__file__).resolve().parents[2]

TEXT = """\
# a comment at the top
name: t   # trailing comment
params:
  prompt: fallback     # aligned comment
  seed: null
banks:
  - name: one   # first bank
    prompts:
      - kick drum   # pad 1
      - 'single quoted'
      - "double quoted"   # pad 3

  - name: two
    prompts: [flow a, "flow b", flow c]   # flow style
midi:
  - note: 60-62
    action: generate
    prompt: "{pad_prompt}"
"""


def changed_lines(a: str, b: str) -> list[int]:
    la, lb = a.splitlines(), b.splitlines()
    assert len(la) == len(lb)
    return [i + 1 for i, (x, y) in enumerate(zip(la, lb, strict=True)) if x != y]


def test_plain_prompt_replaced_comment_kept():
    new, line = set_pad_prompt(TEXT, "one", 0, "deep 808 kick")
    assert line == 9
    assert changed_lines(TEXT, new) == [9]
    assert new.splitlines()[8] == "      - deep 808 kick   # pad 1"
    assert Mapper.from_yaml(new).banks[0].prompts[0] == "deep 808 kick"


def test_quoting_kept_and_text_that_needs_quotes():
    new, _ = set_pad_prompt(TEXT, "one", 1, "it's here")
    assert new.splitlines()[9] == "      - 'it''s here'"
    new, _ = set_pad_prompt(TEXT, "one", 2, 'say "hi"')
    assert new.splitlines()[10] == '      - "say \\"hi\\""   # pad 3'
    new, _ = set_pad_prompt(TEXT, "one", 0, "a: b # not a comment")
    assert yaml.safe_load(new)["banks"][0]["prompts"][0] == "a: b # not a comment"
    assert changed_lines(TEXT, new) == [9]


def test_flow_list_gets_double_quotes():
    new, line = set_pad_prompt(TEXT, "two", 0, "pad, with comma")
    assert line == 14
    assert new.splitlines()[13] == '    prompts: ["pad, with comma", "flow b", flow c]   # flow style'
    assert Mapper.from_yaml(new).banks[1].prompts == ("pad, with comma", "flow b", "flow c")


def test_unknown_bank_pad_and_multiline_refused():
    with pytest.raises(EditError, match="no bank 'three'"):
        set_pad_prompt(TEXT, "three", 0, "x")
    with pytest.raises(EditError, match="has 3 prompts; there is no pad 4"):
        set_pad_prompt(TEXT, "one", 3, "x")
    with pytest.raises(EditError, match="one line"):
        set_pad_prompt(TEXT, "one", 0, "a\nb")


def test_empty_prompt_is_written_but_the_mapping_check_refuses_it_with_file_line():
    new, line = set_pad_prompt(TEXT, "one", 0, "", source="m.yaml")
    with pytest.raises(MappingError) as info:
        Mapper.from_texts([(new, "m.yaml")])
    assert any(e.startswith(f"m.yaml:{line}:") for e in info.value.errors), info.value.errors


@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_mapping_edits_one_line_only(path):
    text = path.read_text()
    spec = Mapper.from_files([path])
    bank = spec.banks[0]
    new, line = set_pad_prompt(text, bank.name, len(bank.prompts) - 1, "edited prompt, with comma", str(path))
    assert changed_lines(text, new) == [line]
    assert Mapper.from_texts([(new, str(path))]).banks[0].prompts[-1] == "edited prompt, with comma"


def test_find_bank_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: a\n")
    b.write_text(TEXT)
    assert find_bank_file([a, b], "two") == b
    assert find_bank_file([a, b], "nope") is None
