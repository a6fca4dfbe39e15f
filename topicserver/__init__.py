"""Topic servers: the owners of topics on the ring (``manage.py runtopicserver``)."""
