"""The one exception type every layer raises for bad user input.

It lives in the lowest layer so that firmware_profiles, coordinator_free, agent and
predictor can all raise it; the CLI turns it into a one-line message and exit status 2.
"""


class UserError(Exception):
    """Bad input from a person or a file: a spec, node file, profile or data file.

    The message names the culprit (the key, file or value) and, where possible, the fix.
    """
