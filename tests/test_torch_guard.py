"""The PyTorch cross-check skips visibly without torch, but FAILS in CI (CI=true) so it cannot be switched off.

Each test runs pytest on ``test_against_torch.py`` in a subprocess whose ``sys.path`` starts with a fake
``torch`` package that cannot be imported.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def run_without_torch(tmp_path, ci, error="ModuleNotFoundError"):
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {error}('simulated: torch is not installed')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # faster start-up; the module needs no third-party plugin
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--collect-only",
           str(TESTS / "test_against_torch.py")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=300)


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_torch_skips_outside_ci(tmp_path, ci):
    proc = run_without_torch(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 5), out  # 5: "no tests collected" (the module was skipped)
    assert "PyTorch is not installed" in out and "skipped" in out.lower(), out


@pytest.mark.parametrize("ci", ["true"])
def test_missing_torch_fails_in_ci(tmp_path, ci):
    proc = run_without_torch(tmp_path, ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 5), out
    assert "CI is set but PyTorch cannot be imported" in out, out


def test_broken_torch_fails_in_ci(tmp_path):
    proc = run_without_torch(tmp_path, "true", error="OSError")
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 5), out
    assert "CI is set but PyTorch cannot be imported" in out and "OSError" in out, out
