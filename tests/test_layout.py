"""The package's shape: every import arrow points one way (function-local imports included), and
no training loop imports another loop (they share paced/train/batches.py, optimization.py, ...)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "paced"
LOOPS = {"paced.train.sft", "paced.train.distill", "paced.train.rl", "paced.analysis.snr", "paced.train.continual"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the paced modules it imports anywhere in its body (AST, nothing is executed)."""
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for alias in node.names:
                    full = f"{mod}.{alias.name}"
                    deps.add(full if full in mods else mod)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert {"paced.config", "paced.train.rl", "paced.tasks.answers"} <= set(graph)   # the walk saw the tree
    assert "paced.train.batches" in graph["paced.train.sft"]                       # and its arrows
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_loop_imports_another_loop():
    graph = import_graph()
    assert {(m, d) for m in LOOPS for d in graph[m] if d in LOOPS} == set()


ROOT = PACKAGE.parent


def test_docs_benchmarks_is_generated_from_the_results():
    """docs/benchmarks.md is what benchmarks/report.py renders from benchmarks/results/*.json."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_relative_link_in_the_docs_exists():
    import re
    missing = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+://", path) and not (doc.parent / path).exists():
                missing.append(f"{doc.name}: {target}")
    assert missing == []
