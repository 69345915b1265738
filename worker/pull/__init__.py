"""``xray-worker pull``: films queried and retrieved from a PACS into the inbox, for ``watch`` to
screen (README, "Pulling from a PACS").

- ``period.py``: which study dates a run asks for, and the daily window it may retrieve in;
- ``identifiers.py``: the C-FIND identifiers asked, and the answers checked into typed records;
- ``association.py``: one association to a PACS, its timeouts and what a DIMSE status means;
- ``query.py``: C-FIND, study -> series -> image;
- ``retrieve.py``: C-GET into the inbox with the receiver's writer, or C-MOVE to our receiver;
- ``run.py``: one run against one PACS: query, remember (``worker/db/pulls.py``), claim, retrieve.

It screens nothing and loads no model: what it retrieves lands in the inbox as
``<SOPInstanceUID>.dcm``, exactly as ``receive`` writes it.
"""
