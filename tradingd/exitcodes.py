"""Exit codes (sysexits.h), so systemd and scripts can tell failures apart.

The unit sets RestartPreventExitStatus=78: a broken configuration is not restarted in a loop.
"""

EX_OK = 0
EX_FAILURE = 1  # a check failed (e.g. `tradingd unlock` refused)
EX_USAGE = 64  # wrong command-line usage
EX_DATAERR = 65  # bad input data
EX_UNAVAILABLE = 69  # a dependency (database, exchange clock) is unavailable or unusable
EX_SOFTWARE = 70  # internal error: the supervisor escalated
EX_TEMPFAIL = 75  # try again later
EX_CONFIG = 78  # configuration error
