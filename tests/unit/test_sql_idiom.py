"""One database idiom: the workers' SQL is parameterised, never built with values pasted into its text.

The scan reads every module under workers/ and fails on SQL text that:
- interpolates something (f-string, `.format`, `%`) inside a quoted literal or right after an operator
  that takes a value (`=`, `<`, `>`, `LIMIT`, `OFFSET`, `IN (`): a value pasted in;
- is built with `%` at all, or asks SQLAlchemy for `literal_binds`;
- is a simple-query script (several statements separated by `;`): the protocol that takes no parameters.
Interpolating identifiers (a partition's table name, a column list, `$n` placeholders) stays allowed.
"""

import ast
import re
import string
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "workers"

_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|VALUES|WHERE|BEGIN|COMMIT|ROLLBACK|SET LOCAL)\b")
_SCRIPT = re.compile(r";\s*(BEGIN|COMMIT|ROLLBACK|SET|SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)
_TAKES_A_VALUE = re.compile(r"(=|<>|!=|<|>|\bLIMIT|\bOFFSET|\bIN\s*\()\s*$", re.IGNORECASE)


def _pasted(parts: list[tuple[str, bool]]) -> str | None:
    """`parts`: the literal text and, after it, whether a value is interpolated there. Why it is a
    value pasted into SQL, or None."""
    text = "".join(literal for literal, _ in parts)
    if not _SQL.search(text):
        return None
    before = ""
    for literal, interpolated in parts:
        before += literal
        if not interpolated:
            continue
        if before.count("'") % 2 == 1:
            return "interpolated inside a quoted literal"
        if _TAKES_A_VALUE.search(before):
            return "interpolated where a value belongs"
        before += "X"  # an identifier
    return None


def _fstring_parts(node: ast.JoinedStr) -> list[tuple[str, bool]]:
    parts: list[tuple[str, bool]] = []
    literal = ""
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            literal += value.value
        else:
            parts.append((literal, True))
            literal = ""
    parts.append((literal, False))
    return parts


def _format_parts(template: str) -> list[tuple[str, bool]]:
    return [(literal, field is not None) for literal, field, _, _ in string.Formatter().parse(template)]


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level names bound to string constants (the SQL templates `.format` is called on)."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = node.value.value
    return found


def problems_in(source: str, name: str = "<source>") -> list[str]:
    """Every place in `source` where SQL is built with values in its text."""
    tree = ast.parse(source)
    templates = _module_strings(tree)
    found: list[str] = []

    def report(node: ast.AST, why: str) -> None:
        found.append(f"{name}:{getattr(node, 'lineno', '?')}: {why}")

    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        if isinstance(node, ast.JoinedStr):
            parts = _fstring_parts(node)
            if why := _pasted(parts):
                report(node, f"f-string SQL {why}")
            if _SQL.search("".join(p for p, _ in parts)) and _SCRIPT.search("".join(p for p, _ in parts)):
                report(node, "f-string SQL script (simple-query protocol)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _SQL.search(node.value) and _SCRIPT.search(node.value):
                report(node, "SQL script (simple-query protocol: several statements)")
            if "literal_binds" in node.value:
                report(node, "literal_binds")
        elif isinstance(node, ast.keyword) and node.arg == "literal_binds":
            report(node.value, "literal_binds")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "format":
            receiver = node.func.value  # type: ignore[attr-defined]
            template = None
            if isinstance(receiver, ast.Constant) and isinstance(receiver.value, str):
                template = receiver.value
            elif isinstance(receiver, ast.Name):
                template = templates.get(receiver.id)
            if template is not None and (why := _pasted(_format_parts(template))):
                report(node, f".format SQL {why}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            left = node.left
            if isinstance(left, ast.Name):
                left = ast.Constant(templates.get(left.id))
            if isinstance(left, ast.Constant) and isinstance(left.value, str) and _SQL.search(left.value):
                report(node, "SQL built with %")
    return found


def test_no_worker_module_pastes_values_into_sql():
    problems = [
        problem
        for path in sorted(WORKERS.rglob("*.py"))
        for problem in problems_in(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        # yesterday's inbox claim and BEGIN script
        "def f(t, c, m): return f\"INSERT INTO {t} (consumer, message_id) VALUES ('{c}', '{m}')\"",
        "def f(tenant): return f\"BEGIN;SET LOCAL appt.tenant_id = '{tenant}'\"",
        "def f(s): return f'{s};COMMIT'",
        "def f(ids): return f'SELECT mark({ids}) WHERE x = {ids}'",
        "def f(n): return f'SELECT id FROM t ORDER BY id LIMIT {n}'",
        "_Q = \"SELECT * FROM t WHERE a = '{a}'\"\ndef f(a): return _Q.format(a=a)",
        "def f(a): return 'SELECT * FROM t WHERE a = %s' % a",
        "def f(s): return s.compile(compile_kwargs={'literal_binds': True})",
        "def f(d): return d.execute('BEGIN;INSERT INTO t VALUES (1)')",
    ],
)
def test_the_scan_catches_values_pasted_into_sql(source):
    assert problems_in(source)


@pytest.mark.parametrize(
    "source",
    [
        "_Q = 'INSERT INTO {table} (a) VALUES ($1)'\nQ = _Q.format(table='messaging.inbox')",
        "def f(name, n): return f'SELECT * FROM {name}({n})'",
        "def f(cols): return f'INSERT INTO t ({cols}) VALUES ($1, $2)'",
        "X = \"SELECT set_config('appt.tenant_id', $1, true)\"",
        "def f(who): return f'hello {who}; select a greeting'",  # not SQL
    ],
)
def test_the_scan_lets_identifiers_and_placeholders_through(source):
    assert not problems_in(source)


# Where the transaction's tenant setting may be written: a batch scopes each handler to its message's tenant
# and switches only when the tenant changes (workers/runtime/batch.py), which is right only while no
# handler or store moves the setting itself.
TENANT_SETTERS = {"workers/runtime/database.py", "workers/runtime/inbox.py", "workers/runtime/outbox.py"}


def test_only_the_runtime_sets_the_transactions_tenant():
    setters = {
        str(path.relative_to(ROOT))
        for path in WORKERS.rglob("*.py")
        if re.search(r"set_config\(|TENANT_SETTING", path.read_text(encoding="utf-8"))
    }
    assert setters == TENANT_SETTERS
