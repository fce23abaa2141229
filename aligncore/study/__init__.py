"""Studies as code: a study file (or a shipped recipe) → content-addressed cells → tables.

    from aligncore.study import load_study, run_study, make_report
    sf, study = load_study("alignment-matrix")
    plan = plan_study(sf, study, scale="tiny")
    run_study(plan, "studies/am")
    report = make_report("studies/am")

``alignctl study run|report|list|show`` is the command line over these functions.
"""

from __future__ import annotations

from pathlib import Path

from .execute import StudyRunResult, plan_status, run_study
from .plan import StudyPlan, plan_study
from .recipes import find_recipe, list_recipes
from .report import make_report, publish_leaderboard, write_report
from .spec import Study, StudyError, StudyFile, parse_study, read_study_file

__all__ = ["load_study", "plan_study", "run_study", "plan_status", "make_report", "write_report", "publish_leaderboard",
           "list_recipes", "find_recipe", "Study", "StudyFile", "StudyPlan", "StudyRunResult", "StudyError"]


def load_study(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[StudyFile, Study]:
    """Read and schema-check a study file or recipe (``--set PATH=VALUE`` overrides applied first)."""
    sf = read_study_file(source, overrides)
    return sf, parse_study(sf)
