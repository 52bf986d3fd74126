"""`python -m sse_gateway_client listen|publish ...`"""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
