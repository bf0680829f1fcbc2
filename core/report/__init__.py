"""Self-contained HTML reports of a pipeline: a CLI run folder or the job folders of the service.

``write_run_report(run_dir)`` writes ``run_dir/report.html``; ``render_report(stages, title)`` renders the page
from ``StageInput`` descriptions (the API builds them from job rows). Torch-free: the API imports this.
"""

from layercut.report.build import KEY_FILES, STAGE_KINDS, SUBTITLE, StageInput, render_report
from layercut.report.run_folder import REPORT_NAME, render_run_report, run_stages, write_run_report

__all__ = [
    "KEY_FILES",
    "REPORT_NAME",
    "STAGE_KINDS",
    "SUBTITLE",
    "StageInput",
    "render_report",
    "render_run_report",
    "run_stages",
    "write_run_report",
]
