import sys

from custom.cli import main

sys.exit(main())
