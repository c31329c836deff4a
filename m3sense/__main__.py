import sys

from m3sense.cli import main

sys.exit(main())
