"""Normal command-line output shows aligncore's lines only: third-party warnings and log chatter are
hidden (``alignctl --debug`` / ``-v`` show them).

The causes aligncore can fix are fixed where they arise (e.g. transformers' renamed
``activation_checkpointing`` argument); what remains comes from inside the libraries
(deprecations one library raises about another's calls, advisory log lines) and is filtered
here, once, by the command line. Library code never changes warning filters.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: libraries whose warnings normal output leaves out
THIRD_PARTY = ("transformers", "trl", "peft", "accelerate", "diffusers", "torch", "torchvision", "timm", "datasets",
               "huggingface_hub", "tokenizers", "safetensors", "pyarrow", "sklearn", "skimage", "PIL", "matplotlib",
               "numpy", "scipy", "tqdm", "pydantic")
_PATTERN = r"(" + "|".join(THIRD_PARTY) + r")(\.|$)"
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' weight loading/saving bars follow it
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def quiet_third_party() -> None:
    """Hide third-party warnings and info/warning logs for the rest of this process (and its workers)."""
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)  # developer notices, never the user's business
    warnings.filterwarnings("ignore", module=_PATTERN)
    # libraries read these when they are imported (later, inside the command), and child processes
    # (accelerate launch ranks, fresh data-loader workers) inherit them
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in ("transformers", "trl", "peft", "accelerate", "diffusers", "datasets", "huggingface_hub", "timm",
                 "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # set up at import: tell it too
        try:
            sys.modules["transformers"].logging.set_verbosity_error()
            sys.modules["transformers"].logging.disable_progress_bar()
        except AttributeError:
            pass
    if "huggingface_hub" in sys.modules:
        try:
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        except AttributeError:
            pass
