"""`calculator`: arithmetic and unit conversion by walking Python's AST, never `eval`.

Numbers, + - * / // % **, parentheses, a few functions (sqrt, abs, round, min, max, log, exp,
sin, cos, tan), the constants pi and e, percentages ("15% of 80") and quantities with units
("3 km to mi", "20 C to F"). Exponents, number sizes and expression length are bounded so a
hostile expression cannot take the CPU or the memory.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidInput
from .tools import ToolContext, ToolResult, ToolSpec

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_MAGNITUDE = 1e300
MAX_NODES = 200

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log,
    "log10": math.log10, "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "floor": math.floor, "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}

# Linear units: factor to the dimension's base unit.
_UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0),
    "km": ("length", 1000.0), "in": ("length", 0.0254), "ft": ("length", 0.3048),
    "yd": ("length", 0.9144), "mi": ("length", 1609.344),
    "mg": ("mass", 1e-6), "g": ("mass", 0.001), "kg": ("mass", 1.0), "t": ("mass", 1000.0),
    "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "ml": ("volume", 0.001), "l": ("volume", 1.0), "gal": ("volume", 3.785411784),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "d": ("time", 86400.0),
    "b": ("data", 1.0), "kb": ("data", 1e3), "mb": ("data", 1e6), "gb": ("data", 1e9),
    "tb": ("data", 1e12), "kib": ("data", 1024.0), "mib": ("data", 1024.0**2),
    "gib": ("data", 1024.0**3),
}
_TEMPERATURES = {"c", "f", "k"}
_CONVERSION = re.compile(
    r"^\s*(?P<expr>.+?)\s*(?P<src>[a-z]+)\s+(?:to|in)\s+(?P<dst>[a-z]+)\s*$", re.I)
_PERCENT_OF = re.compile(r"(\d+(?:\.\d+)?)\s*%\s*of\s*", re.I)


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression; InvalidInput for anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidInput(f"The expression is longer than {MAX_EXPRESSION_CHARS} characters.",
                           code="invalid_expression")
    text = _PERCENT_OF.sub(r"(\1/100)*", expression).replace("^", "**").replace("×", "*")
    text = text.replace(",", "") if re.fullmatch(r"[\d,.\s+\-*/()%^]+", text) else text
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise InvalidInput(f"Not an arithmetic expression: {expression[:80]!r}.",
                           code="invalid_expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise InvalidInput("The expression is too long.", code="invalid_expression")
    value = _eval(tree.body)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("The result is not a finite number.", code="invalid_expression")
    return value


def convert(value: float, source: str, target: str) -> float:
    s, t = source.lower(), target.lower()
    if s in _TEMPERATURES and t in _TEMPERATURES:
        kelvin = {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[s]
        return {"c": kelvin - 273.15, "f": (kelvin - 273.15) * 9 / 5 + 32, "k": kelvin}[t]
    if s not in _UNITS or t not in _UNITS:
        unknown = s if s not in _UNITS else t
        raise InvalidInput(f"Unknown unit {unknown[:20]!r}.", code="unknown_unit")
    (sd, sf), (td, tf) = _UNITS[s], _UNITS[t]
    if sd != td:
        raise InvalidInput(f"Cannot convert {sd} ({s}) to {td} ({t}).", code="unknown_unit")
    return value * sf / tf


def _check(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput("Only numbers are allowed.", code="invalid_expression")
    if abs(value) > MAX_MAGNITUDE:
        raise InvalidInput("The number is too large.", code="invalid_expression")
    return value


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant):
        return _check(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT or (abs(left) > 1 and abs(right) * math.log10(
                    abs(left)) > 300):
                raise InvalidInput("The exponent is too large.", code="invalid_expression")
            return _check(float(left) ** right if isinstance(right, float) else left ** right)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise InvalidInput("That operator is not allowed.", code="invalid_expression")
        try:
            return _check(op(left, right))
        except ZeroDivisionError:
            raise InvalidInput("Division by zero.", code="invalid_expression") from None
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS and not node.keywords and len(node.args) <= 10):
        args = [_eval(a) for a in node.args]
        try:
            return _check(_FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(f"{node.func.id} cannot take {args}.",
                               code="invalid_expression") from None
    raise InvalidInput("Only numbers, + - * / // % **, parentheses and math functions are "
                       "allowed.", code="invalid_expression")


def calculate(expression: str) -> tuple[float, str | None]:
    """The value and its unit (None for a plain number)."""
    match = _CONVERSION.match(expression)
    if match and match["dst"].lower() not in _CONSTANTS:
        value = evaluate(match["expr"])
        return convert(value, match["src"], match["dst"]), match["dst"]
    return evaluate(expression), None


def _show(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                  and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.10g}"


class Calculator:
    spec = ToolSpec(
        name="calculator",
        description="Evaluate arithmetic exactly (e.g. '(1200 - 950) / 950 * 100', "
        "'15% of 80', 'sqrt(2)') or convert units ('3 km to mi', '20 C to F').",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "minLength": 1,
                                          "maxLength": MAX_EXPRESSION_CHARS}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        cache_ttl_s=86_400.0,
    )

    async def run(self, arguments: Mapping[str, Any], context: ToolContext) -> ToolResult:
        expression = str(arguments["expression"])
        value, unit = calculate(expression)
        shown = _show(value) + (f" {unit}" if unit else "")
        return ToolResult(content=f"{expression} = {shown}", data={"value": value, "unit": unit})
