"""Normal output holds aligncore's lines only; --debug and -v show third-party warnings."""

from __future__ import annotations

import os
import subprocess
import sys

WARNS = '''
import warnings
from aligncore import hookimpl


@hookimpl
def register_fusions(register):
    warnings.warn("a library's deprecation notice", FutureWarning)
    warnings.warn("a library's user warning", UserWarning)
'''


def test_third_party_warnings_are_hidden_unless_asked_for(tmp_path):
    (tmp_path / "transformers_like.py").write_text(WARNS)
    from aligncore.quiet import QUIET_ENV

    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["PYTHONPATH"] = str(tmp_path)

    def fusions(*flags):
        return subprocess.run([sys.executable, "-m", "aligncore", *flags, "-p", "transformers_like", "fusions"],
                              capture_output=True, text=True, env=env)

    quiet = fusions()
    assert quiet.returncode == 0 and "FutureWarning" not in quiet.stderr and "or " in quiet.stdout, quiet.stderr
    for flag in ("-v", "--debug"):
        loud = fusions(flag)
        assert loud.returncode == 0 and "FutureWarning: a library's deprecation notice" in loud.stderr, (flag, loud.stderr)


def test_training_log_lines_are_readable():
    from aligncore.train.dpo_trainer import log_line
    from aligncore.train.pixel_trainer import epoch_line

    line = log_line({"loss": 0.69314, "rewards/accuracies": 0.5, "learning_rate": 1e-6, "epoch": 0.5,
                     "logps/chosen": -16.2, "total_flos": 1.0}, 10, 40)
    assert line == ("step 10/40  loss 0.6931  rewards/accuracies 0.5000  learning_rate 1e-06  epoch 0.5  "
                    "logps/chosen -16.2000")
    assert log_line({"train_runtime": 5.5, "train_loss": 0.6996, "epoch": 1.0}, 40, 40) == "done: 40 steps in 5.5 s, mean loss 0.6996"
    row = {"epoch": 0, "step": 12, "train_loss": 0.5, "val_loss": 0.4, "val_auc": None, "elapsed_s": 3.2, "stopped": ""}
    assert epoch_line(row, 3) == "epoch 1/3  step 12  train_loss 0.5000  val_loss 0.4000  3.2 s"
