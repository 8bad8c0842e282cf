import sys

from convforge.cli import main

sys.exit(main())
