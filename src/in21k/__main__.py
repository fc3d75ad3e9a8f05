import sys

from in21k.cli import main

sys.exit(main())
