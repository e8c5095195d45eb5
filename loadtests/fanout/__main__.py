import sys

from loadtests.fanout.cli import main

sys.exit(main())
