"""The architecture the layout promises: the runtime job never imports model development, and no module
of the package imports itself back through others (no import cycles), counting imports inside functions."""
import ast
import os
import subprocess
import sys

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "ranker")


def module_files():
    """{dotted module name: file} of every module of the package."""
    out = {}
    for base, _dirs, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(base, f), ROOT)[:-3].split(os.sep)
                name = ".".join(rel[:-1] if rel[-1] == "__init__" else rel)
                out[name] = os.path.join(base, f)
    return out


def imports_of(name, path, known):
    """Package modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    is_pkg = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # a name imported from a module counts as that module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph():
    files = module_files()
    return {name: imports_of(name, path, files) for name, path in files.items()}


def test_runtime_never_imports_model_development():
    g = graph()
    runtime = [m for m in g if m.startswith("ranker.runtime")]
    assert len(runtime) >= 10
    bad = {m: sorted(i for i in g[m] if i.startswith("ranker.develop")) for m in runtime}
    assert not {m: v for m, v in bad.items() if v}
    # the package root and `python -m ranker` (the job) stay on the runtime side too
    assert not [i for i in g["ranker"] | g["ranker.__main__"] if i.startswith("ranker.develop")]


def test_running_the_job_loads_no_development_module(tmp_path):
    """The same, as run: the example job with any import of ranker.develop made to fail."""
    import shutil
    proj = tmp_path / "project"
    shutil.copytree(os.path.join(ROOT, "examples", "class2d_sim"), proj)
    code = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('ranker.develop'):\n"
        "            raise ImportError('runtime imported ' + name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from ranker.runtime.job import main\n"
        "rc = main(['--o', 'External/job003/', '--in_parts', 'Class2D/job002/run_it020_data.star'])\n"
        "assert not [m for m in sys.modules if m.startswith('ranker.develop')]\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=proj, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (proj / "External" / "job003" / "RELION_JOB_EXIT_SUCCESS").exists()


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(g.get(m, ())):
            # a package's __init__ importing its own submodule is not a cycle of modules
            if state.get(n) == "open" and not n.startswith(m + ".") and not m.startswith(n + "."):
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
