"""The live web page (docs/web.md): what the bridge sees and does, in any browser.

- `state.PageState`: what the page shows, fed by the bridge (bridge.py) off its hot path;
- `push.Broadcaster`: one encoded update per interval for every open page, bounded queues;
- `server.PageServer`: aiohttp serving the page, its static files and the WebSocket feed;
- `access.Access`: who may see it on each port (a password, or only the ingress proxy);
- `words`: the bridge's problems in plain words;
- `static/`: the page itself (HTML, CSS, JavaScript, no build step) and uPlot, vendored.
"""

from facespace_bridge.web.access import Access, exposure_problem, password_from
from facespace_bridge.web.server import PageServer, can_bind
from facespace_bridge.web.state import PageState

__all__ = ["Access", "PageServer", "PageState", "can_bind", "exposure_problem", "password_from"]
