"""milestone-sync core: the domain, its ports, pure planning and the use cases.

Nothing here performs I/O or imports SQLAlchemy, HTTP clients, vendor SDKs or the scheduler.
"""
