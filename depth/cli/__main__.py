"""``python -m depth.cli``."""

from depth.cli import main

raise SystemExit(main())
