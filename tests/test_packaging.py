"""A normal (non-editable) install: what pip builds from pyproject.toml, and that it runs on its own.

The checkout is copied and installed with ``pip install --target``; the installed ``p2pntk`` then runs
from another folder with only that copy of our packages on its path (the runtime dependencies come from
this environment), so ``p2pntk bench`` must find the benchmarks that were installed, not the checkout's.
"""
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "benchmarks", "common", "coordinator_free", "firmware_profiles", "host", "p2pntk", "predictor")


def _install(tmp_path: Path) -> Path:
    src, site = tmp_path / "src", tmp_path / "site"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                              "runs", ".pytest_cache"))
    # without network: build with this environment's setuptools when it is new enough for the SPDX license
    isolation = [] if int(metadata.version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target",
                           str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return site


def test_a_normal_install_has_the_license_the_benchmarks_and_no_torch(tmp_path):
    site = _install(tmp_path)
    assert sorted(p.name for p in site.iterdir() if (p / "__init__.py").exists()) == list(PACKAGES)
    assert (site / "firmware_profiles" / "profiles" / "raspberry-pi-4b.toml").exists()
    [info] = site.glob("p2p_ntk-*.dist-info")
    meta = (info / "METADATA").read_text()
    assert "License-Expression: MIT" in meta and "License ::" not in meta and "Classifier: " in meta
    assert "Copyright (c) 2026 the p2p-ntk developers" in next(info.rglob("LICENSE")).read_text()
    runtime = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert runtime and not [ln for ln in runtime if "torch" in ln]

    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    p2pntk = [sys.executable, str(site / "bin" / "p2pntk")]
    where = subprocess.run([sys.executable, "-c", "import agent, benchmarks; print(agent.__file__, benchmarks.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == [str(site / "agent" / "__init__.py"), str(site / "benchmarks" / "__init__.py")]
    version = subprocess.run(p2pntk + ["--version"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"p2pntk {metadata.version('p2p-ntk')}"
    bench = subprocess.run(p2pntk + ["bench", "no-such-target"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)  # the installed benchmarks answer with their table of targets
    assert bench.returncode == 2 and "unknown target no-such-target (known: predictor," in bench.stderr
    assert "Traceback" not in bench.stderr
