"""``xray-worker scan``: an archive screened in place. ``local`` runs it on this machine's
threads, ``ray`` on a Ray cluster; both commit through ``commit`` and report through
``progress``."""
