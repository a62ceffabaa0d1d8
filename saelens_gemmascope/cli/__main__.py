import sys

from saelens_gemmascope.cli import main

sys.exit(main())
