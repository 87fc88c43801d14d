"""The shop's phone web app, served by the service at ``/shop/`` (files in ``static/``).

Nothing here is secret: the app holds no data until a member of staff signs in.
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parent / "static"

# no-cache: the browser revalidates (cheap with ETags), so a new version reaches phones at once.
shop_app = create_static_files_router(path="/shop", directories=[STATIC], html_mode=True, name="shop",
                                      cache_control=CacheControlHeader(no_cache=True))
