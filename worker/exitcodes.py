"""Process exit codes (sysexits.h where one fits; systemd and shells understand them)."""

OK = 0
SOME_FILES_FAILED = 1  # predict: at least one file could not be screened
USAGE = 2  # click's own code for a bad command line
DRIFT = 3  # report drift: a figure is beyond its limits (docs/drift.md)
PACS = 69  # EX_UNAVAILABLE: a PACS refused or failed what pull asked
INTERRUPTED = 130  # a second SIGTERM/SIGINT: exit at once
TEMPFAIL = 75  # EX_TEMPFAIL: a resource (the database) is down; try again later
CONFIG = 78  # EX_CONFIG: bad settings, or a model that cannot be loaded
