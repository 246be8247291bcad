"""docs/flags.md is generated from the option sections (tools/flags_doc.py): it fails here
when a flag, its default, help or resumability changed and the page was not regenerated."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import flags_doc  # noqa: E402

from dualssl_tf import config  # noqa: E402


def test_flags_page_is_current():
    with open(flags_doc.PAGE) as f:
        assert f.read() == flags_doc.render(), (
            "docs/flags.md is stale: run python tools/flags_doc.py")


def test_every_flag_has_its_row():
    text = flags_doc.render()
    for flag, _, field in config.flag_fields():
        row = [line for line in text.splitlines() if line.startswith(f"| `--{flag}` |")]
        assert len(row) == 1, flag
        assert ("| yes |" in row[0]) == field.metadata["resumable"], flag


def test_check_mode_exit_status(tmp_path, monkeypatch):
    stale = tmp_path / "flags.md"
    stale.write_text("old\n")
    monkeypatch.setattr(flags_doc, "PAGE", str(stale))
    assert flags_doc.main(["flags_doc.py", "--check"]) == 1
    assert flags_doc.main(["flags_doc.py"]) == 0 and stale.read_text() == flags_doc.render()
    assert flags_doc.main(["flags_doc.py", "--check"]) == 0
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "flags_doc.py"),
                           "--bogus"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
