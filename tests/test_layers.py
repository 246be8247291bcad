"""Imports run down the layers ARCHITECTURE.md draws, never up (issue 23 part 3).

Every ``import`` / ``from ... import`` of dualssl_tf inside dualssl_tf/ (at any depth,
function-level imports included) is parsed with ``ast``; a module may import its own layer
and the layers below. The layers and the few upward edges still allowed are declared here,
the same as ARCHITECTURE.md's drawing: change both together.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dualssl_tf")

# Low to high; a module's layer is that of the longest prefix naming it.
LAYERS = [
    ("core", ["dualssl_tf", "dualssl_tf.options", "dualssl_tf.losses", "dualssl_tf.runfiles",
              "dualssl_tf.stderr_capture", "dualssl_tf.correlation",
              "dualssl_tf.cross_replica", "dualssl_tf.keras_internals"]),
    ("blocks", ["dualssl_tf.data", "dualssl_tf.models", "dualssl_tf.optim"]),
    # Arrays and exports in, numbers out; evaluation/data.py, which builds a task's labelled
    # data by name, sits above the task registry.
    ("evaluation", ["dualssl_tf.evaluation"]),
    ("monitors", ["dualssl_tf.monitors"]),
    ("methods", ["dualssl_tf.methods"]),
    ("tasks", ["dualssl_tf.tasks"]),
    ("config", ["dualssl_tf.config"]),
    ("probe data", ["dualssl_tf.evaluation.data"]),
    ("run", ["dualssl_tf.run"]),
    # The tasks' analysis hooks (tasks/<name>/analysis.py) are analysis: only
    # tools/analyze.py and the analysis import them.
    ("analysis", ["dualssl_tf.analysis", "dualssl_tf.tasks.hltm.analysis",
                  "dualssl_tf.tasks.translation1d.analysis", "dualssl_tf.tasks.images.analysis"]),
]

# Upward edges still allowed, (importer prefix, imported prefix): why.
ALLOWED_UP = {
    ("dualssl_tf.run.trainer", "dualssl_tf.analysis.callback"):
        "the opt-in --analysis_every monitor, the one piece of analysis training runs",
}


def layer_of(module):
    best, rank = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return rank


def _is_module(name):
    path = os.path.join(ROOT, *name.split("."))
    return os.path.isdir(path) or os.path.exists(path + ".py")


def package_imports():
    """{module: {imported dualssl_tf module}} of every module under dualssl_tf/."""
    edges = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            module = module.removesuffix(".__init__")
            found = set()
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("dualssl_tf"))
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
                        node.module or "").startswith("dualssl_tf"):
                    for a in node.names:   # `from pkg import mod` imports pkg.mod
                        sub = f"{node.module}.{a.name}"
                        found.add(sub if _is_module(sub) else node.module)
            edges[module] = found
    return edges


def _allowed(importer, imported):
    return any((importer == a or importer.startswith(a + ".")) and
               (imported == b or imported.startswith(b + ".")) for a, b in ALLOWED_UP)


def upward(edges):
    """The (importer, imported) pairs that go up a layer and are not in ALLOWED_UP."""
    return sorted((m, i) for m, imported in edges.items() for i in imported
                  if layer_of(i) > layer_of(m) and not _allowed(m, i))


def test_no_lower_layer_imports_a_higher_one():
    bad = upward(package_imports())
    assert not bad, "imports against the layers (ARCHITECTURE.md):\n" + "\n".join(
        f"  {m} -> {i} ({LAYERS[layer_of(m)][0]} imports {LAYERS[layer_of(i)][0]})"
        for m, i in bad)


def test_every_allowed_upward_edge_is_still_used():
    """An exception nothing needs any more is dropped from the list (and ARCHITECTURE.md)."""
    edges = package_imports()
    for a, b in ALLOWED_UP:
        assert any((m == a or m.startswith(a + ".")) and (i == b or i.startswith(b + "."))
                   for m, imported in edges.items() for i in imported), (a, b)


def test_the_check_catches_an_upward_import():
    # methods below run: a method importing the trainer, or the losses the config, is named.
    assert upward({"dualssl_tf.methods.base": {"dualssl_tf.run.trainer"},
                   "dualssl_tf.losses": {"dualssl_tf.config"},
                   "dualssl_tf.run.trainer": {"dualssl_tf.methods"}}) == [
        ("dualssl_tf.losses", "dualssl_tf.config"),
        ("dualssl_tf.methods.base", "dualssl_tf.run.trainer")]
