"""param: {{.Param.KEY}} in provisioning steps, checked at create, filled in
for the guest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from roost.config import params
from roost.config.document import ConfigError
from roost.config.loader import parse_config

STEPS = [{"mode": "system",
          "script": "echo {{.Param.VERSION}} > /tmp/v; echo {{ .Param.VERSION }}"},
         {"mode": "data", "path": "/etc/app.conf", "content": "name={{.Param.NAME}}\n"}]


def test_params_are_filled_in() -> None:
    config = parse_config({"param": {"VERSION": "1.2", "NAME": "demo"}, "provision": STEPS})
    filled = params.substitute(config.provision, config.param)
    assert filled[0].script == "echo 1.2 > /tmp/v; echo 1.2"
    assert filled[1].content == "name=demo\n"
    assert config.provision[0].script == STEPS[0]["script"]  # the template itself is kept


def test_an_undefined_param_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"provision\[1\] uses \{\{\.Param\.NAME\}\}"):
        parse_config({"param": {"VERSION": "1"}, "provision": STEPS})
    with pytest.raises(ConfigError, match="param"):
        parse_config({"param": {"not a name": "x"}})


def test_create_takes_params_from_set(tmp_path: Path) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("provision:\n- script: echo {{.Param.X}}\n")
    env = {**os.environ, "ROOST_HOME": str(tmp_path)}
    run = [sys.executable, "-m", "roost", "create", "p", "--config", str(config)]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "which param does not define" in proc.stderr
    assert not (tmp_path / "p").exists()
    proc = subprocess.run([*run, "--set", "param.X=hello"], env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
