"""The study wing: experiment definitions, the reproduction sweep and its report, the analyses and the demo.
Imports the core and the training wing."""
