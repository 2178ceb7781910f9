"""Failure drills: named fault cases run against a live mesh on this machine, each with
inject / recover / check, metrics, and a JSON + markdown + PNG report (``faillite drill``)."""
