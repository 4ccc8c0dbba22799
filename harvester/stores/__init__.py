"""What the harvester context holds besides the database: the file store and the
per-process caches.

These sit below the services, and the context (:mod:`harvester.context`)
holds them: when they lived in ``harvester/services/`` the context imported
services while every service imported the context, a cycle between the two
folders. A store imports no service.
"""
