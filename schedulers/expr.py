"""LambdaLR multipliers written as text, e.g. "0.1 ** (epoch // 20)", evaluated without eval().

A config can hold a string but not a Python function; parsing a small whitelist
(numbers, `epoch`, `pi`, + - * / // % **, min, max, exp, log, cos, sin) keeps the
lecture's lambdas expressible while anything else (names, attributes, other
calls) is rejected with the offending piece named. Arithmetic is done in floats
so `9 ** 9 ** 9` overflows at once instead of building a huge integer.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from functools import lru_cache

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "exp": math.exp,
    "log": math.log,
    "cos": math.cos,
    "sin": math.sin,
}
_CONSTANTS = {"pi": math.pi}
MAX_LENGTH = 300


class ExpressionError(ValueError):
    """The text is not an allowed lr expression; the message says which part is not."""


Evaluator = Callable[[float], float]


def _compile(node: ast.AST) -> Evaluator:
    """Turn the checked tree into nested closures, so evaluation never touches eval()."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"only numbers are allowed as constants, not {node.value!r}")
        value = float(node.value)
        return lambda epoch: value
    if isinstance(node, ast.Name):
        if node.id == "epoch":
            return lambda epoch: epoch
        if node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
            return lambda epoch: value
        raise ExpressionError(f"unknown name '{node.id}' (allowed: epoch, pi)")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op, left, right = _BINARY[type(node.op)], _compile(node.left), _compile(node.right)
        return lambda epoch: op(left(epoch), right(epoch))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        uop, operand = _UNARY[type(node.op)], _compile(node.operand)
        return lambda epoch: uop(operand(epoch))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            what = ast.unparse(node.func)
            raise ExpressionError(
                f"call of '{what}' is not allowed (allowed: {sorted(_FUNCTIONS)})"
            )
        if node.keywords or not node.args:
            raise ExpressionError(f"{node.func.id}() takes positional arguments only")
        fn, args = _FUNCTIONS[node.func.id], [_compile(a) for a in node.args]
        return lambda epoch: fn(*(a(epoch) for a in args))
    if isinstance(node, ast.Attribute):
        raise ExpressionError(f"attribute access '{ast.unparse(node)}' is not allowed")
    raise ExpressionError(f"'{ast.unparse(node)}' is not allowed")


@lru_cache(maxsize=256)
def parse(text: str) -> Evaluator:
    """Check `text` against the whitelist and return a function of the epoch."""
    if not isinstance(text, str):
        raise ExpressionError(f"must be a string expression of epoch, got {text!r}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"not a valid expression ({err.msg})") from None
    return _compile(tree.body)


def first_bad(fn: Evaluator, count: int, unit: str = "epoch") -> str | None:
    """What goes wrong first when `fn` is evaluated at 0, 1, ..., count - 1, or None. A
    multiplier must be a finite real number >= 0; a domain error (log(0)), a division by
    zero, an overflow or a complex result ((-1) ** 0.5) is reported with the epoch (or the
    step, with `unit="step"`) at which it happens."""
    for t in range(count):
        try:
            value = fn(float(t))
        except (ArithmeticError, ValueError, TypeError) as err:
            why = str(err) or type(err).__name__
            return f"fails at {unit} {t} ({type(err).__name__}: {why})"
        if isinstance(value, complex):
            return f"gives the complex number {value} at {unit} {t}; must be a real number >= 0"
        if not (math.isfinite(value) and value >= 0):
            return f"gives {value} at {unit} {t}; must be finite and >= 0"
    return None


class LrExpression:
    """A picklable LambdaLR multiplier; its state is just the text (LambdaLR saves __dict__)."""

    def __init__(self, text: str) -> None:
        parse(text)  # fail now, not at the first step
        self.text = text

    def __call__(self, epoch: int) -> float:
        return parse(self.text)(float(epoch))

    def __repr__(self) -> str:
        return f"LrExpression({self.text!r})"
