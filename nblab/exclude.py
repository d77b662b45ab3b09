"""Sweep exclude rules as safe expressions, e.g.
"precision.preset == 'bf16' and optimizer.lr > 2e-3": parsed once, checked against the
sweep's axes, evaluated by walking the syntax tree (never eval), so a rule in a shared
TOML file can compare values and nothing else."""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable
from typing import Any

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_WORDS = {"true": True, "false": False}  # TOML spellings, besides Python's True / False
_ALLOWED = (
    "only comparisons (== != < <= > >= in, not in), and / or / not, literals "
    "(strings, numbers, true / false, lists) and the sweep's axis paths"
)
_NODE_WORDS = {
    ast.Call: "a function call",
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.BinOp: "arithmetic",
    ast.Lambda: "a lambda",
    ast.IfExp: "a conditional expression",
    ast.NamedExpr: "an assignment",
}

Env = dict[str, Any]


class ExcludeExpression:
    """An exclude rule such as "precision.preset == 'bf16' and optimizer.lr > 2e-3",
    checked once and evaluated by walking its syntax tree."""

    def __init__(self, source: str, axes: list[str]):
        self.source = source
        self.axes = list(axes)
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"a valid expression ({err.msg}); {_ALLOWED}") from None
        self._eval = self._compile(tree.body)

    def __call__(self, values: Env) -> bool:
        return bool(self._eval(values))

    def __repr__(self) -> str:
        return f"ExcludeExpression({self.source!r})"

    def _compile(self, node: ast.AST) -> Callable[[Env], Any]:
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: all(p(env) for p in parts)
            return lambda env: any(p(env) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._compile(node.operand)
            return lambda env: not inner(env)
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub | ast.UAdd)
            and isinstance(node.operand, ast.Constant)
            and _is_number(node.operand.value)
        ):
            value = -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
            return lambda env: value
        if isinstance(node, ast.Compare):
            return self._compile_compare(node)
        if isinstance(node, ast.Constant) and (
            node.value is None or type(node.value) in (str, int, float, bool)
        ):
            value = node.value
            return lambda env: value
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            items = [self._compile(e) for e in node.elts]
            return lambda env: [item(env) for item in items]
        if isinstance(node, ast.Name | ast.Attribute):
            return self._compile_name(node)
        what = _NODE_WORDS.get(type(node), f"{type(node).__name__}")
        raise ValueError(f"{what} is not allowed; {_ALLOWED}")

    def _compile_compare(self, node: ast.Compare) -> Callable[[Env], Any]:
        ops = []
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise ValueError(f"the operator {type(op).__name__} is not allowed; {_ALLOWED}")
            ops.append(_COMPARE[type(op)])
        left = self._compile(node.left)
        rights = [self._compile(c) for c in node.comparators]

        def compare(env: Env) -> bool:
            a = left(env)
            for op, right in zip(ops, rights, strict=True):
                b = right(env)
                if not op(a, b):
                    return False
                a = b
            return True

        return compare

    def _compile_name(self, node: ast.Name | ast.Attribute) -> Callable[[Env], Any]:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise ValueError(f"attribute access is not allowed; {_ALLOWED}")
        path = ".".join([node.id, *reversed(parts)])
        if path in self.axes:
            return lambda env: env[path]
        if path in _WORDS:
            value = _WORDS[path]
            return lambda env: value
        close = difflib.get_close_matches(path, self.axes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if "." in path and any(path.startswith(axis + ".") for axis in self.axes):
            raise ValueError(f"attribute access is not allowed ({path}); {_ALLOWED}")
        axes = ", ".join(self.axes) or "(none)"
        raise ValueError(f"an axis of this sweep ({axes}), not {path!r}{hint}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
