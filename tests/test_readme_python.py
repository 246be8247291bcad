"""The README's "Use it from Python" example runs as written (through the public API)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(tmp_path, capsys):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "import dualssl_tf as dt" in code and "model.fit(" in code
    code = code.replace("/tmp/my_encoder", str(tmp_path / "my_encoder"))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    result = eval("dt.knn_probe(features[:64], labels[:64], features[64:], labels[64:], "
                  "num_classes=2)", scope)
    # Two classes that differ in brightness: any encoder separates them well above chance.
    assert result["top1"] > 0.6
    assert os.path.isdir(tmp_path / "my_encoder")
    assert "top1" in capsys.readouterr().out
