"""Static files of the /ui dashboard (index.html, app.js, app.css, favicon.svg), served by ``layercut.api.routes.ui``."""
