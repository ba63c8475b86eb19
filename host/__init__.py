"""The host side: the operations run from a workstation, not a board: the loopback swarm and its process
launcher, fleet bundles and rehearsals in emulated hosts (netns), progress bars and process memory tuning.
"""
