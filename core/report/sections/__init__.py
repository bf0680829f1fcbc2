"""The sections of the report, one module each: ``context()`` reads what the section shows from its stage's
result, ``render()`` fills the section's template (``layercut/report/templates/<section>.html``) with it.

``pending`` draws any section whose stage is not done yet; ``overview`` the page's first section.
"""

MAX_TABLE_ROWS = 200
"""The most rows a table shows (a dataset may have thousands of classes)."""
