import sys

from refocus.cli import main

sys.exit(main())
