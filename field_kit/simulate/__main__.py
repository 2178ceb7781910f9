"""``python -m field_kit.simulate``: the ``faillite simulate`` command on its own."""

import sys

from field_kit.simulate.cli import main

sys.exit(main())
