import sys

from ezvtb.cli import main

sys.exit(main())
