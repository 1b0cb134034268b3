"""Editing a pad prompt in a mapping file, keeping everything else in it byte for byte.

The file is composed with ruamel.yaml (round-trip parser: every node keeps its exact place in the
text), the prompt's scalar is found under ``banks: - name: <bank>  prompts: [...]`` and only its
characters are replaced; comments, blank lines, key order, flow or block style and quoting of
every other line stay as written. The new scalar keeps the old one's quoting where it can (plain,
single or double quotes; double quotes in a flow list or when the text needs them), and the
result is parsed again and compared with the intended data before anything is written.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode


class EditError(ValueError):
    """The edit cannot be made; ``str()`` is one sentence."""


@dataclass(frozen=True)
class PromptPlace:
    path: Path
    line: int  # 1-based line of the prompt in the file


def _get(node: MappingNode, key: str):  # noqa: ANN202 - a ruamel node or None
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return v
    return None


def _prompt_node(text: str, bank: str, pad: int, source: str) -> tuple[ScalarNode, bool]:
    """The scalar of prompt ``pad`` of ``bank`` and whether it sits in a flow list."""
    try:
        root = YAML().compose(text)
    except YAMLError as exc:
        raise EditError(f"{source} is not valid YAML ({exc}).") from None
    banks = _get(root, "banks") if isinstance(root, MappingNode) else None
    if not isinstance(banks, SequenceNode):
        raise EditError(f"{source} has no 'banks' list.")
    for item in banks.value:
        if not isinstance(item, MappingNode):
            continue
        name = _get(item, "name")
        if isinstance(name, ScalarNode) and name.value == bank:
            prompts = _get(item, "prompts")
            if not isinstance(prompts, SequenceNode):
                raise EditError(f"Bank {bank!r} in {source} has no list of prompts.")
            if not 0 <= pad < len(prompts.value):
                raise EditError(f"Bank {bank!r} has {len(prompts.value)} prompts; there is no pad {pad + 1}.")
            node = prompts.value[pad]
            if not isinstance(node, ScalarNode):
                raise EditError(f"Prompt {pad + 1} of bank {bank!r} in {source} is not text.")
            return node, bool(prompts.flow_style)
    raise EditError(f"There is no bank {bank!r} in {source}.")


def find_bank_file(paths: list[Path], bank: str) -> Path | None:
    """The mapping file (of ``paths``, in order) that defines ``bank``."""
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
            _prompt_node(text, bank, 0, str(p))
        except (OSError, EditError):
            continue
        return Path(p)
    return None


def _plain(value: str) -> str | None:
    """``value`` as a plain block scalar when YAML reads it back unchanged, else None."""
    buf = io.StringIO()
    y = YAML()
    y.width = 1 << 20
    y.dump([value], buf)
    out = buf.getvalue()
    if not out.startswith("- ") or out.count("\n") != 1 or out[2] in "'\"|>":
        return None
    return out[2:-1]


def scalar_text(value: str, style: str | None, in_flow: bool) -> str:
    """The YAML text of ``value`` in the old scalar's ``style`` where it is safe."""
    if style is None and not in_flow:
        plain = _plain(value)
        if plain is not None and plain == value:
            return plain
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def set_pad_prompt(text: str, bank: str, pad: int, prompt: str, source: str = "<mapping>") -> tuple[str, int]:
    """``text`` with prompt ``pad`` (0-based) of ``bank`` replaced by ``prompt``; returns (new text,
    1-based line). Raises :class:`EditError`."""
    if "\n" in prompt or "\r" in prompt:
        raise EditError("A pad prompt is one line of text.")
    node, in_flow = _prompt_node(text, bank, pad, source)
    if node.style in ("|", ">"):
        raise EditError(f"Prompt {pad + 1} of bank {bank!r} is a block scalar; edit it in {source}.")
    start, end = node.start_mark.index, node.end_mark.index
    new = text[:start] + scalar_text(prompt, node.style, in_flow) + text[end:]
    try:
        before, after = pyyaml.safe_load(text), pyyaml.safe_load(new)
    except pyyaml.YAMLError as exc:
        raise EditError(f"The edited {source} would not be valid YAML ({exc}).") from None
    for b in before.get("banks") or []:
        if isinstance(b, dict) and b.get("name") == bank:
            b["prompts"][pad] = prompt
    if before != after:
        raise EditError(f"The prompt could not be written into {source} without changing anything else.")
    return new, node.start_mark.line + 1
