"""Griffe extension for the documentation site: reads salaug's docstrings as the site renders them.

salaug's docstrings are Google style with a few reStructuredText habits that also serve ``help()``
and the doctests. Before mkdocstrings parses a docstring this extension rewrites, in the text only
(never the code):

* ``Example:`` headings as ``Examples:``, so doctests render as code blocks;
* ``Params:`` (the sampled parameters a transform returns, not its arguments) as an admonition
  titled "Sampled parameters";
* Sphinx roles: ``:class:`~a.b.C``` becomes a link to ``a.b.C`` where the site documents it and
  plain code where it does not (a name without its module is looked up where the docstring is);
  ``:math:`(B, C)``` becomes code;
* an ``Args:`` entry naming several arguments (``low, high: ...``) as one entry per argument;
* a paragraph ending in ``::`` (a reStructuredText literal block) ends in ``:``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|py:\w+):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_ARGS_HEADING = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_SEVERAL_ARGS = re.compile(r"^(\s+)(\w+(?:,\s*\w+)+):(\s.*)?$")


def _role(match: re.Match[str], resolve: Callable[[str], str]) -> str:
    short, target = match.group(1) == "~", match.group(2).strip().lstrip(".")
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{resolve(target)}" optional><code>{title}</code></autoref>'


def _resolver(obj: griffe.Object | None, module: str) -> Callable[[str], str]:
    """Full path of a role's target: as written when it starts with ``salaug.``, else looked up in the
    object's class, its module and the packages above (an imported name by what it imports), else
    taken as in ``module``."""

    def resolve(target: str) -> str:
        if target.split(".", 1)[0] == "salaug":
            return target
        head, _, rest = target.partition(".")
        scopes: list[griffe.Object | griffe.Alias | None] = [obj, obj.parent] if obj is not None else []
        package = obj.module.parent if obj is not None else None
        while package is not None:  # then the packages above: what they export
            scopes.append(package)
            package = package.parent
        for scope in scopes:
            if scope is None or not (scope.is_class or scope.is_module):
                continue
            member = scope.members.get(head)
            if member is not None:
                path = member.target_path if isinstance(member, griffe.Alias) else member.path
                return f"{path}.{rest}" if rest else path
        return f"{module}.{target}"

    return resolve


def _split_several_args(lines: list[str]) -> list[str]:
    """``a, b: text`` (with its continuation lines) -> ``a: text`` and ``b: text``."""
    out: list[str] = []
    in_args, indent = False, ""
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = _ARGS_HEADING.match(line)
        if heading:
            in_args, indent = True, heading.group(1)
            out.append(line)
            i += 1
            continue
        if in_args and line.strip() and not line.startswith(indent + " "):
            in_args = False
        several = _SEVERAL_ARGS.match(line) if in_args else None
        if several is None:
            out.append(line)
            i += 1
            continue
        entry_indent = several.group(1)
        body = [several.group(3) or ""]
        i += 1
        while i < len(lines) and lines[i].startswith(entry_indent + " "):
            body.append("\n" + lines[i])
            i += 1
        for name in re.split(r",\s*", several.group(2)):
            out.append(f"{entry_indent}{name}:{''.join(body)}")
    return out


def rewrite(text: str, module: str, obj: griffe.Object | None = None) -> str:
    """The docstring ``text`` of ``obj`` (an object of ``module``), as the site renders it."""
    text = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", text, flags=re.MULTILINE)
    text = re.sub(r"^(\s*)Params:\s*$", r'\1Sampled parameters:', text, flags=re.MULTILINE)
    text = _MATH.sub(r"`\1`", text)
    resolve = _resolver(obj, module)
    text = _ROLE.sub(lambda m: _role(m, resolve), text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)
    return "\n".join(_split_several_args(text.split("\n")))


class SalaugDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded objects (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        module = obj.module.path if not obj.is_module else obj.path
        obj.docstring.value = rewrite(obj.docstring.value, module, obj)
