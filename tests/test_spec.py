"""Spec loading, --set overrides and validation (docs/design.md, section 6)."""
import subprocess
import sys

import pytest

from agent.spec import default_spec, load_spec, parse_override, spec_hash
from common.errors import UserError


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[train]\nalgorithm = "cta"\nlr = 0.2\n[network]\ntopology = "star"\n')
    spec = load_spec(f, ["train.algorithm=atc", "data.classes=[0,1,2]", "network.topology=erdos-renyi:0.5"])
    assert spec.train.algorithm == "atc" and spec.train.lr == 0.2
    assert spec.data.classes == [0, 1, 2]
    assert spec.network.topology == "erdos-renyi:0.5"
    assert spec.model == default_spec().model


def test_override_values_are_toml():
    assert parse_override("train.lr=1e-2") == ("train.lr", 0.01)
    assert parse_override("train.batch=full") == ("train.batch", "full")
    assert parse_override("data.classes = [3, 8]") == ("data.classes", [3, 8])


@pytest.mark.parametrize("override,culprit", [
    ("train.lrr=0.1", "train.lrr"),
    ("trian.lr=0.1", "[trian]"),
    ("train.lr=-1", "train.lr"),
    ("train.algorithm=sgd", "train.algorithm"),
    ("data.classes=[1]", "data.classes"),
    ("network.topology=ring", "network.topology"),
    ("network.topology=erdos-renyi:2", "network.topology"),
    ("data.split=dirichlet:-1", "data.split"),
    ("train.batch=0", "train.batch"),
    ("model.width=wide", "model.width"),
    ("train", "--set"),
])
def test_bad_values_name_the_key(override, culprit):
    with pytest.raises(UserError) as err:
        load_spec(None, [override])
    assert culprit in str(err.value)


def test_bad_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_spec(bad)


def test_spec_hash_changes_with_any_shared_key_and_not_with_a_tuned_one():
    a = load_spec(None)
    assert spec_hash(a) == spec_hash(load_spec(None))
    for key in ("train.batch=5", "model.width=64", "data.seed=3", "network.topology='star'", "train.dtype='float64'"):
        assert spec_hash(a) != spec_hash(load_spec(None, [key])), key
    for key in ("train.lr=0.25", "train.rounds=7"):  # tuned by each board; the swarm agrees on them at start
        assert spec_hash(a) == spec_hash(load_spec(None, [key])), key


def test_cli_unknown_key_exits_2_with_one_line(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("[train]\nlearning_rate = 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "p2pntk", "simulate", str(f), "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.learning_rate" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.json").exists()
