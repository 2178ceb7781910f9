import sys

from faillite.cli import main

sys.exit(main())
