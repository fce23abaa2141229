"""Chat templates that come with a model or checkpoint are code: bounded before and while they run.

A processor's chat template is a Jinja program the checkpoint's author wrote, and rendering it is the
first thing a VLM branch does with it. Jinja's sandbox stops attribute tricks, not work: nested loops
over ``range(100000)``, ``10 ** 10 ** 10`` or ``'x' * 10 ** 9`` run until the machine gives up. So:

1. :func:`check_template` refuses, before anything runs, what can run unbounded: ``range`` and
   ``lipsum``, the ``**`` and ``*`` operators (bar numbers multiplied by numbers), recursive loops,
   macros that call themselves (directly or through others), loops nested more than
   :data:`MAX_LOOP_DEPTH` deep, and width or count arguments above :data:`MAX_WIDTH` (``center``,
   ``indent``, ``wordwrap``, ``truncate``, ``ljust``, ``zfill``, ``%999999999s``...).
2. :func:`render_bounded` renders it in a separate process under a wall-clock deadline
   (:data:`RENDER_TIMEOUT_S`), a memory limit and an output size limit; the process dies with its
   parent and is killed at the deadline.

Templates aligncore itself ships (``trusted``) are rendered in-process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Iterable

from .errors import AlignCoreError

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_LOOP_DEPTH = 3
MAX_WIDTH = 10_000
#: wall-clock seconds one sandboxed render may take (the interpreter's start is included)
RENDER_TIMEOUT_S = float(os.environ.get("ALIGNCORE_TEMPLATE_TIMEOUT_S", 60))
RENDER_MEMORY_BYTES = 1 << 30
MAX_OUTPUT_CHARS = 1 << 20

_FORBIDDEN_CALLS = {"range": "range(), which can count without end", "lipsum": "lipsum(), which can generate without end"}
_WIDTH_FILTERS = {"center", "indent", "wordwrap", "truncate", "batch", "slice", "filesizeformat"}
_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs", "format", "join", "replace", "split", "rsplit"}
_FORMAT_WIDTH = re.compile(r"%[-+ #0]*(\d{5,}|\*)|\{[^}]*:[^}]*\d{5,}[^}]*\}")


class TemplateRefused(AlignCoreError):
    """A chat template that could run unbounded, or that did not finish within its limits."""


def _const_small(node) -> bool:
    from jinja2 import nodes

    return isinstance(node, nodes.Const) and (not isinstance(node.value, (int, float)) or abs(node.value) <= MAX_WIDTH) \
        and not (isinstance(node.value, str) and _FORMAT_WIDTH.search(node.value))


def check_template(source: str, where: str) -> None:
    """Refuse (:class:`TemplateRefused`, naming ``where``) a template that can run unbounded; see the module doc."""
    from jinja2 import nodes
    from jinja2.exceptions import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def refuse(why: str, node=None) -> TemplateRefused:
        line = f" (line {node.lineno})" if node is not None and getattr(node, "lineno", None) else ""
        return TemplateRefused(f"{where}: the chat template{line} {why}; aligncore does not run templates that can "
                               "run without bound. Use a checkpoint whose template renders the conversation directly.")

    if not isinstance(source, str):
        raise refuse(f"is a {type(source).__name__}, not text")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise refuse(f"holds {len(source)} characters (more than {MAX_TEMPLATE_CHARS})")
    env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        tree = env.parse(_strip_generation(source))
    except TemplateSyntaxError as exc:
        raise TemplateRefused(f"{where}: the chat template does not parse (line {exc.lineno}: {exc.message}).") from None
    except RecursionError:
        raise refuse("is nested too deeply to parse") from None

    macros: dict[str, set[str]] = {}

    def walk(node, depth: int, macro: str | None) -> None:
        if isinstance(node, nodes.Pow):
            raise refuse("uses ** (a power can take unbounded time and memory)", node)
        if isinstance(node, nodes.Mul) and not (
                isinstance(node.left, nodes.Const) and isinstance(node.right, nodes.Const)
                and all(isinstance(v.value, (int, float)) and not isinstance(v.value, bool) for v in (node.left, node.right))):
            raise refuse("uses * on values that are not two numbers (repeating a text or list can take unbounded memory)",
                         node)
        if isinstance(node, nodes.Call):
            if isinstance(node.node, nodes.Name):
                if node.node.name in _FORBIDDEN_CALLS:
                    raise refuse(f"calls {_FORBIDDEN_CALLS[node.node.name]}", node)
                if macro is not None:
                    macros.setdefault(macro, set()).add(node.node.name)
            if isinstance(node.node, nodes.Getattr) and node.node.attr in _WIDTH_METHODS:
                if not all(_const_small(a) for a in [*node.args, *(k.value for k in node.kwargs)]) or node.dyn_args \
                        or node.dyn_kwargs:
                    if node.node.attr in ("center", "ljust", "rjust", "zfill", "expandtabs", "format"):
                        raise refuse(f"calls .{node.node.attr}() with a width that is not a small constant", node)
        if isinstance(node, nodes.Filter):
            if node.name in _WIDTH_FILTERS and not all(_const_small(a) for a in [*node.args, *(k.value for k in node.kwargs)]):
                raise refuse(f"uses the {node.name} filter with an argument that is not a small constant", node)
            if node.name == "format" and (node.node is None or not _const_small(node.node)):
                raise refuse("uses the format filter on a format that is not a small constant", node)
        if isinstance(node, nodes.Const) and isinstance(node.value, str) and _FORMAT_WIDTH.search(node.value):
            raise refuse("holds a format with a width of 10000 or more", node)
        if isinstance(node, nodes.For):
            if node.recursive:
                raise refuse("uses a recursive loop", node)
            if depth + 1 > MAX_LOOP_DEPTH:
                raise refuse(f"nests loops {depth + 1} deep (at most {MAX_LOOP_DEPTH})", node)
            walk(node.iter, depth, macro)
            for child in [node.target, *node.body, *node.else_, *([node.test] if node.test else [])]:
                walk(child, depth + 1, macro)
            return
        if isinstance(node, nodes.Macro):
            macros.setdefault(node.name, set())
            for child in node.iter_child_nodes():
                walk(child, depth, node.name)
            return
        if isinstance(node, nodes.CallBlock):
            raise refuse("uses a call block (a macro calling back into the template)", node)
        for child in node.iter_child_nodes():
            walk(child, depth, macro)

    walk(tree, 0, None)
    for name in macros:  # a macro reaching itself through calls can recurse exponentially
        seen, todo = set(), list(macros[name])
        while todo:
            callee = todo.pop()
            if callee == name:
                raise refuse(f"has a macro {name!r} that calls itself")
            if callee in macros and callee not in seen:
                seen.add(callee)
                todo.extend(macros[callee])


def _strip_generation(source: str) -> str:
    """transformers' ``{% generation %}`` / ``{% endgeneration %}`` markers, removed for parsing."""
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", source)


_RENDER = r"""
import json, sys
req = json.loads(sys.stdin.read())
from transformers.utils.chat_template_utils import render_jinja_template
out, _ = render_jinja_template(conversations=req["conversations"], chat_template=req["template"],
                               add_generation_prompt=req["add_generation_prompt"], **req["kwargs"])
longest = max(len(t) for t in out)
if longest > req["max_chars"]:
    sys.stdout.write(json.dumps({"too_long": longest}))
else:
    sys.stdout.write(json.dumps({"text": out[0]}))
"""


def _limits(parent: int, memory: int, cpu_s: int):
    def preexec() -> None:
        import resource

        from .process import die_with_parent

        die_with_parent(parent)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))

    return preexec


def render_bounded(template: str, messages: list[dict], where: str, kwargs: dict[str, Any] | None = None,
                   add_generation_prompt: bool = True, timeout_s: float | None = None,
                   probes: list[list[dict]] = ()) -> str:
    """The text ``template`` renders for ``messages`` (as transformers' ``apply_chat_template`` does), computed
    in a separate process that is killed after ``timeout_s`` (default :data:`RENDER_TIMEOUT_S`) and may use at
    most :data:`RENDER_MEMORY_BYTES`; the template is checked with :func:`check_template` first. ``probes``:
    further conversations rendered under the same limits (e.g. with a long answer, as training renders)."""
    check_template(template, where)
    timeout = RENDER_TIMEOUT_S if timeout_s is None else timeout_s
    req = json.dumps({"template": template, "conversations": [messages, *probes], "kwargs": kwargs or {},
                      "add_generation_prompt": add_generation_prompt, "max_chars": MAX_OUTPUT_CHARS})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen([sys.executable, "-c", _RENDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_limits(os.getpid(), RENDER_MEMORY_BYTES, int(timeout) + 1))
    try:
        out, err = proc.communicate(req, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TemplateRefused(f"{where}: the chat template did not finish rendering the prompt within {timeout:g} s "
                              "(ALIGNCORE_TEMPLATE_TIMEOUT_S); aligncore refuses it.") from None
    try:
        res = json.loads(out) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        res = None
    if res is None:
        last = (err.strip().splitlines() or ["(no message)"])[-1][:300]
        why = "ran out of its memory limit" if "MemoryError" in err else f"failed: {last}"
        raise TemplateRefused(f"{where}: rendering the chat template {why}.")
    if "too_long" in res:
        raise TemplateRefused(f"{where}: the chat template rendered {res['too_long']} characters for one prompt "
                              f"(more than {MAX_OUTPUT_CHARS}); aligncore refuses it.")
    return res["text"]


def templates_of(processor: Any) -> Iterable[tuple[str, str]]:
    """(name, source) of every chat template a processor (and its tokenizer) holds."""
    for owner_name, owner in (("processor", processor), ("tokenizer", getattr(processor, "tokenizer", None))):
        ct = getattr(owner, "chat_template", None) if owner is not None else None
        if isinstance(ct, dict):
            for name, src in ct.items():
                yield f"{owner_name} template {name!r}", src
        elif ct is not None:
            yield f"{owner_name} template", ct
