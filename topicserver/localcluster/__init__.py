"""``manage.py runcluster``'s machinery: a whole local cluster in one terminal (its Redis, its child
processes) and the seeded fault injection of ``--chaos``. Not part of a deployed topic server."""
