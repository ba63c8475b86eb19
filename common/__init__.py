"""The ground floor: typed errors and exit statuses, atomic file I/O (JSON, .npz, TOML) and the config
schema that turns TOML into frozen dataclasses. It imports nothing else from this project.
"""
