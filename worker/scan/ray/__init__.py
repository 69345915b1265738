"""``scan --engine ray``: the driver (``driver``), the Prepare and Screen actors
(``stages``) and joining the cluster (``cluster``)."""
