"""`python -m lattice.agent`: the sidecar agent's process, as `lattice run` starts it (agent/launch.py)."""

import sys

from lattice.agent.launch import main

sys.exit(main(sys.argv[1:]))
