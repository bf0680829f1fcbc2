"""Self-contained HTML reports of a pipeline: a CLI run folder or the job folders of the service.

``write_run_report(run_dir)`` writes ``run_dir/report.html``; ``render_report(stages, title)`` renders the page
from ``StageInput`` descriptions (the API builds them from job rows). The page is rendered from Jinja templates
(``templates/``), one per section (``sections/``). Torch-free: the API imports this.
"""

from layercut.report.page import SUBTITLE, render_report
from layercut.report.run_folder import REPORT_NAME, render_run_report, run_stages, write_run_report
from layercut.report.stages import KEY_FILES, STAGE_KINDS, StageInput

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
