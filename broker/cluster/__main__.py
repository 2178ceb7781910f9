"""``python -m broker.cluster``: start a cluster of a real engine and keep it up until Ctrl-C."""

import sys

from broker.cluster import main

sys.exit(main())
