"""The command line (`python -m rnncore`) and the demo. May import anything."""
