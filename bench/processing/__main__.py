import sys

from bench.processing import main

sys.exit(main())
