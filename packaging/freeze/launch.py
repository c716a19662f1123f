"""PyInstaller's entry script for the standalone medsynth (see medsynth_standalone.py)."""

from medsynth_standalone import main

main()
