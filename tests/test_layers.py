"""Imports run down the layers ARCHITECTURE.md draws, never up (issue 23 part 3).

Every ``import`` / ``from ... import`` of dualssl_tf inside dualssl_tf/ (at any depth,
function-level imports included) is parsed with ``ast``; a module may import its own layer
and the layers below. The layers are declared here, the same as ARCHITECTURE.md's drawing:
change both together. No upward edge is allowed (ALLOWED_UP is empty); one added there
needs its reason, and is dropped once nothing uses it.
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
    # dt.train: the trainer with the analysis monitor handed to it (--analysis_every).
    ("entry", ["dualssl_tf.training"]),
]

# Upward edges still allowed, {(importer prefix, imported prefix): why}: none.
ALLOWED_UP = {}


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


def _names(prefix, module):
    return module == prefix or module.startswith(prefix + ".")


def upward(edges, allowed=None):
    """The (importer, imported) pairs that go up a layer and are not in ``allowed``
    (default ALLOWED_UP)."""
    allowed = ALLOWED_UP if allowed is None else allowed
    return sorted((m, i) for m, imported in edges.items() for i in imported
                  if layer_of(i) > layer_of(m)
                  and not any(_names(a, m) and _names(b, i) for a, b in allowed))


def unused(edges, allowed):
    """The entries of ``allowed`` that no edge of ``edges`` uses."""
    return sorted((a, b) for a, b in allowed
                  if not any(_names(a, m) and _names(b, i)
                             for m, imported in edges.items() for i in imported))


def test_no_lower_layer_imports_a_higher_one():
    bad = upward(package_imports())
    assert not bad, "imports against the layers (ARCHITECTURE.md):\n" + "\n".join(
        f"  {m} -> {i} ({LAYERS[layer_of(m)][0]} imports {LAYERS[layer_of(i)][0]})"
        for m, i in bad)


def test_every_allowed_upward_edge_is_still_used():
    """An exception nothing needs any more is dropped from the list (and ARCHITECTURE.md)."""
    assert unused(package_imports(), ALLOWED_UP) == []


def test_an_allowed_edge_exempts_its_imports_and_an_unused_one_is_named():
    edges = {"dualssl_tf.tasks.hltm.task": {"dualssl_tf.run.callbacks", "dualssl_tf.models"},
             "dualssl_tf.methods.base": {"dualssl_tf.config"}}
    allowed = {("dualssl_tf.tasks", "dualssl_tf.run.callbacks"): "why",
               ("dualssl_tf.run.trainer", "dualssl_tf.analysis"): "why"}
    assert upward(edges, allowed) == [("dualssl_tf.methods.base", "dualssl_tf.config")]
    assert unused(edges, allowed) == [("dualssl_tf.run.trainer", "dualssl_tf.analysis")]
    assert upward(edges, {}) == [("dualssl_tf.methods.base", "dualssl_tf.config"),
                                 ("dualssl_tf.tasks.hltm.task", "dualssl_tf.run.callbacks")]


def test_the_check_catches_an_upward_import():
    # methods below run: a method importing the trainer, or the losses the config, is named;
    # so are the two edges this layering removed (a task's measurement from run/, the
    # trainer's analysis monitor).
    assert upward({"dualssl_tf.methods.base": {"dualssl_tf.run.trainer"},
                   "dualssl_tf.losses": {"dualssl_tf.config"},
                   "dualssl_tf.run.trainer": {"dualssl_tf.methods", "dualssl_tf.monitors.base",
                                              "dualssl_tf.analysis.callback"},
                   "dualssl_tf.tasks.hltm.task": {"dualssl_tf.run.callbacks"},
                   "dualssl_tf.training": {"dualssl_tf.analysis.callback"}}) == [
        ("dualssl_tf.losses", "dualssl_tf.config"),
        ("dualssl_tf.methods.base", "dualssl_tf.run.trainer"),
        ("dualssl_tf.run.trainer", "dualssl_tf.analysis.callback"),
        ("dualssl_tf.tasks.hltm.task", "dualssl_tf.run.callbacks")]
