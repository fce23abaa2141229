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


def quiet_third_party() -> None:
    """Hide third-party warnings and info/warning logs for the rest of this process (and its workers)."""
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)  # developer notices, never the user's business
    warnings.filterwarnings("ignore", module=_PATTERN)
    # child processes (accelerate launch, data-loader workers started fresh) start quiet too
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    for name in ("transformers", "trl", "peft", "accelerate", "diffusers", "datasets", "huggingface_hub", "timm",
                 "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # its own handler was set up at import: tell it too
        try:
            sys.modules["transformers"].logging.set_verbosity_error()
        except AttributeError:
            pass
