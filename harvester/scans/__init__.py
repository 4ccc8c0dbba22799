"""Scans: search spaces, point proposers and the adaptive CLs scan.

Pure functions of a scan's record (the services keep the record).
"""
