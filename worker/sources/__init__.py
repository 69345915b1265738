"""Where files come from: the watched inbox (``inbox``) and claims in it (``claim``), and
the archive walk (``walk``)."""
